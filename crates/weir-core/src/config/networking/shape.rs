//! The field names of the parts of Istio's networking kinds that weir
//! reads only in part or not at all (a DestinationRule's traffic policy, a
//! VirtualService's HTTP routes): kept as YAML values, they are still
//! checked for unknown fields, as the rest of a document is by serde, so a
//! typo (`tls: {mod: SIMPLE}`) is an error rather than a setting silently
//! lost. The names are those of Istio's `networking.istio.io/v1` API
//! (`destination_rule.proto`, `virtual_service.proto`), in their JSON
//! (camelCase) form, which is what the CRDs accept.

use serde_yaml_ng::Value;

use crate::config::load::DocCtx;

/// What a value must look like: anything (a leaf, or a part weir does not
/// look into), a mapping with these fields, or a list of one shape.
pub(crate) enum Shape {
    Any,
    Object(&'static [(&'static str, Shape)]),
    List(&'static Shape),
}

use Shape::{Any, List, Object};

const PORT_SELECTOR: Shape = Object(&[("number", Any)]);

const CLIENT_TLS: Shape = Object(&[
    ("mode", Any),
    ("clientCertificate", Any),
    ("privateKey", Any),
    ("caCertificates", Any),
    ("credentialName", Any),
    ("subjectAltNames", Any),
    ("sni", Any),
    ("insecureSkipVerify", Any),
    ("caCrl", Any),
]);

const CONSISTENT_HASH: Shape = Object(&[
    ("httpHeaderName", Any),
    (
        "httpCookie",
        Object(&[
            ("name", Any),
            ("path", Any),
            ("ttl", Any),
            ("attributes", Any),
        ]),
    ),
    ("useSourceIp", Any),
    ("httpQueryParameterName", Any),
    ("ringHash", Object(&[("minimumRingSize", Any)])),
    ("maglev", Object(&[("tableSize", Any)])),
    ("minimumRingSize", Any),
]);

const LOCALITY_LB: Shape = Object(&[
    ("distribute", List(&Object(&[("from", Any), ("to", Any)]))),
    ("failover", List(&Object(&[("from", Any), ("to", Any)]))),
    ("failoverPriority", Any),
    ("enabled", Any),
]);

const LOAD_BALANCER: Shape = Object(&[
    ("simple", Any),
    ("consistentHash", CONSISTENT_HASH),
    ("localityLbSetting", LOCALITY_LB),
    ("warmupDurationSecs", Any),
    (
        "warmup",
        Object(&[
            ("duration", Any),
            ("minimumPercent", Any),
            ("aggression", Any),
        ]),
    ),
]);

const CONNECTION_POOL: Shape = Object(&[
    (
        "tcp",
        Object(&[
            ("maxConnections", Any),
            ("connectTimeout", Any),
            (
                "tcpKeepalive",
                Object(&[("probes", Any), ("time", Any), ("interval", Any)]),
            ),
            ("maxConnectionDuration", Any),
            ("idleTimeout", Any),
        ]),
    ),
    (
        "http",
        Object(&[
            ("http1MaxPendingRequests", Any),
            ("http2MaxRequests", Any),
            ("maxRequestsPerConnection", Any),
            ("maxRetries", Any),
            ("idleTimeout", Any),
            ("h2UpgradePolicy", Any),
            ("useClientProtocol", Any),
            ("maxConcurrentStreams", Any),
        ]),
    ),
]);

const OUTLIER_DETECTION: Shape = Object(&[
    ("splitExternalLocalOriginErrors", Any),
    ("consecutiveLocalOriginFailures", Any),
    ("consecutiveGatewayErrors", Any),
    ("consecutive5xxErrors", Any),
    ("consecutiveErrors", Any),
    ("interval", Any),
    ("baseEjectionTime", Any),
    ("maxEjectionPercent", Any),
    ("minHealthPercent", Any),
]);

const PORT_TRAFFIC_POLICY: Shape = Object(&[
    ("port", PORT_SELECTOR),
    ("loadBalancer", LOAD_BALANCER),
    ("connectionPool", CONNECTION_POOL),
    ("outlierDetection", OUTLIER_DETECTION),
    ("tls", CLIENT_TLS),
]);

/// A DestinationRule's (or subset's) `trafficPolicy`.
pub(crate) const TRAFFIC_POLICY: Shape = Object(&[
    ("loadBalancer", LOAD_BALANCER),
    ("connectionPool", CONNECTION_POOL),
    ("outlierDetection", OUTLIER_DETECTION),
    ("tls", CLIENT_TLS),
    ("portLevelSettings", List(&PORT_TRAFFIC_POLICY)),
    (
        "tunnel",
        Object(&[("protocol", Any), ("targetHost", Any), ("targetPort", Any)]),
    ),
    ("proxyProtocol", Object(&[("version", Any)])),
    (
        "retryBudget",
        Object(&[("percent", Any), ("minRetryConcurrency", Any)]),
    ),
]);

/// A DestinationRule's `workloadSelector`.
pub(crate) const WORKLOAD_SELECTOR: Shape = Object(&[("matchLabels", Any)]);

const DESTINATION: Shape = Object(&[("host", Any), ("subset", Any), ("port", PORT_SELECTOR)]);

const HTTP_MATCH: Shape = Object(&[
    ("name", Any),
    ("uri", Any),
    ("scheme", Any),
    ("method", Any),
    ("authority", Any),
    ("headers", Any),
    ("port", Any),
    ("sourceLabels", Any),
    ("gateways", Any),
    ("queryParams", Any),
    ("ignoreUriCase", Any),
    ("withoutHeaders", Any),
    ("sourceNamespace", Any),
    ("statPrefix", Any),
]);

const HTTP_ROUTE_DESTINATION: Shape = Object(&[
    ("destination", DESTINATION),
    ("weight", Any),
    ("headers", Any),
]);

/// An entry of a VirtualService's `http` (weir does not route HTTP, but a
/// misspelt field is still an error).
pub(crate) const HTTP_ROUTE: Shape = Object(&[
    ("name", Any),
    ("match", List(&HTTP_MATCH)),
    ("route", List(&HTTP_ROUTE_DESTINATION)),
    ("redirect", Any),
    ("directResponse", Any),
    ("delegate", Object(&[("name", Any), ("namespace", Any)])),
    ("rewrite", Any),
    ("timeout", Any),
    ("retries", Any),
    ("fault", Any),
    ("mirror", DESTINATION),
    ("mirrors", Any),
    ("mirrorPercentage", Any),
    ("mirrorPercent", Any),
    ("corsPolicy", Any),
    ("headers", Any),
]);

/// A VirtualService's `http`.
pub(crate) const HTTP_ROUTES: Shape = List(&HTTP_ROUTE);

/// Reports, at their paths under `path`, the fields of `value` its shape
/// does not have, and values that are not the mapping or list it needs.
/// Null is accepted anywhere (an unset field).
pub(crate) fn check(ctx: &mut DocCtx<'_>, path: &str, value: &Value, shape: &Shape) {
    match (shape, value) {
        (Any, _) | (_, Value::Null) => {}
        (Object(fields), Value::Mapping(map)) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or("?");
                match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, inner)) => check(ctx, &format!("{path}.{key}"), v, inner),
                    None => {
                        let expected: Vec<String> =
                            fields.iter().map(|(n, _)| format!("{n:?}")).collect();
                        ctx.error(
                            Some(format!("{path}.{key}")),
                            format!(
                                "unknown field {key:?}, expected one of {}",
                                expected.join(", ")
                            ),
                        );
                    }
                }
            }
        }
        (Object(_), _) => ctx.error(
            Some(path.to_owned()),
            "invalid type: expected a mapping (key: value pairs)",
        ),
        (List(inner), Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                check(ctx, &format!("{path}[{i}]"), item, inner);
            }
        }
        (List(_), _) => ctx.error(Some(path.to_owned()), "invalid type: expected a list"),
    }
}
