//! A fake Kubernetes API server for tests: there is no API server on this
//! machine, so tests use kube-rs's documented testing approach, a mock
//! `tower` service (`tower_test::mock::pair`) handed to
//! `kube::Client::new`, with a scenario task that answers the client's
//! requests. This one keeps collections of objects and answers list calls
//! with them, holds watch calls open as streaming bodies and sends them the
//! events a test pushes, answers `404` for resources "not installed" and
//! `403` for resources "forbidden", and lets a test answer TokenReviews.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// A response body: whole, or a stream of watch events.
pub type Body = BoxBody<Bytes, Infallible>;

/// Answers a TokenReview's `spec` with its `status`.
pub type TokenReviewer = Box<dyn Fn(&Value) -> Value + Send>;

#[derive(Default)]
struct State {
    resource_version: u64,
    /// Collection path (`/api/v1/pods`) → (namespace, name) → object.
    collections: HashMap<String, BTreeMap<(String, String), Value>>,
    not_installed: HashSet<String>,
    forbidden: HashSet<String>,
    watchers: HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>,
    /// Collection path → (resourceVersion, event line): replayed to watches
    /// that start from an older version, as the API server does.
    events: HashMap<String, Vec<(u64, String)>>,
    /// Every request, as `METHOD path?query`.
    requests: Vec<String>,
    token_reviewer: Option<TokenReviewer>,
    /// TokenReview request bodies received.
    token_reviews: Vec<Value>,
}

/// The fake API server's state, shared with the scenario task.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Notified on every request.
    pub requested: Arc<Notify>,
}

/// The collection path of an object, from its apiVersion and kind.
pub fn collection(api_version: &str, plural: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

fn key(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or_default().to_owned(),
        m["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code});
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

impl FakeApi {
    /// A kube client talking to a new fake API server (the scenario task
    /// runs until the client is dropped).
    pub fn client(&self) -> kube::Client {
        let (mock, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = api.respond(request).await;
                send.send_response(response);
                api.requested.notify_waiters();
            }
        });
        kube::Client::new(mock, "default")
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// Adds (or replaces) an object without telling watchers: for the
    /// initial state.
    pub fn seed(&self, api_version: &str, plural: &str, mut obj: Value) {
        self.with(|s| {
            s.resource_version += 1;
            obj["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            s.collections
                .entry(collection(api_version, plural))
                .or_default()
                .insert(key(&obj), obj);
        });
    }

    /// Adds, replaces or deletes an object and sends the watch event
    /// (`ADDED`, `MODIFIED` or `DELETED`) to the collection's watchers.
    pub fn push(&self, event: &str, api_version: &str, plural: &str, mut obj: Value) {
        self.with(|s| {
            s.resource_version += 1;
            obj["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            let path = collection(api_version, plural);
            let items = s.collections.entry(path.clone()).or_default();
            if event == "DELETED" {
                items.remove(&key(&obj));
            } else {
                items.insert(key(&obj), obj.clone());
            }
            let line = format!("{}\n", json!({"type": event, "object": obj}));
            s.events
                .entry(path.clone())
                .or_default()
                .push((s.resource_version, line.clone()));
            for w in s.watchers.get_mut(&path).into_iter().flatten() {
                let _ = w.unbounded_send(Bytes::from(line.clone()));
            }
        });
    }

    /// Answers 404 for this collection, as for a CRD that is not installed.
    pub fn not_installed(&self, api_version: &str, plural: &str) {
        self.with(|s| s.not_installed.insert(collection(api_version, plural)));
    }

    /// Serves this collection again (undoes [`not_installed`](Self::not_installed)).
    pub fn with_installed(&self, api_version: &str, plural: &str) {
        self.with(|s| s.not_installed.remove(&collection(api_version, plural)));
    }

    /// Answers 403 for this collection (or stops doing so).
    pub fn forbid(&self, api_version: &str, plural: &str, forbidden: bool) {
        self.with(|s| {
            let path = collection(api_version, plural);
            if forbidden {
                s.forbidden.insert(path);
            } else {
                s.forbidden.remove(&path);
            }
        });
    }

    /// How many requests matched `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.with(|s| s.requests.iter().filter(|r| pred(r)).count())
    }

    /// Waits until `count(pred) >= n`.
    pub async fn wait_for(&self, n: usize, pred: impl Fn(&str) -> bool) {
        loop {
            let notified = self.requested.notified();
            if self.count(&pred) >= n {
                return;
            }
            notified.await;
        }
    }

    /// Sets how TokenReviews are answered.
    pub fn token_reviewer(&self, f: impl Fn(&Value) -> Value + Send + 'static) {
        self.with(|s| s.token_reviewer = Some(Box::new(f)));
    }

    /// The TokenReviews received.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.with(|s| s.token_reviews.clone())
    }

    async fn respond(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        self.with(|s| s.requests.push(format!("{method} {path}?{query}")));
        if method == http::Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let review: Value = serde_json::from_slice(&body).unwrap();
            return self.with(|s| {
                s.token_reviews.push(review.clone());
                match &s.token_reviewer {
                    Some(f) => {
                        let mut out = review.clone();
                        out["status"] = f(&review["spec"]);
                        ok(&out)
                    }
                    None => status(403, "Forbidden", "tokenreviews is forbidden"),
                }
            });
        }
        if method != http::Method::GET {
            return status(
                405,
                "MethodNotAllowed",
                "not supported by the fake API server",
            );
        }
        let watch = query.split('&').any(|kv| kv == "watch=true");
        self.with(|s| {
            if s.not_installed.contains(&path) {
                return status(404, "NotFound", "the server could not find the requested resource");
            }
            if s.forbidden.contains(&path) {
                return status(403, "Forbidden", &format!("{path} is forbidden: User \"system:serviceaccount:weir:weir-control\" cannot list resource"));
            }
            if watch {
                let (tx, rx) = mpsc::unbounded::<Bytes>();
                let since: u64 = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("resourceVersion="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                for (rv, line) in s.events.get(&path).into_iter().flatten() {
                    if *rv > since {
                        let _ = tx.unbounded_send(Bytes::from(line.clone()));
                    }
                }
                s.watchers.entry(path).or_default().push(tx);
                let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
                return Response::builder()
                    .header("content-type", "application/json")
                    .body(BodyExt::boxed(body))
                    .unwrap();
            }
            // GET of one object: /api/v1/namespaces/<ns>/<plural>/<name>.
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            if let ["api", version, "namespaces", ns, plural, name] = parts.as_slice() {
                let found = s
                    .collections
                    .get(&collection(version, plural))
                    .and_then(|c| c.get(&((*ns).to_owned(), (*name).to_owned())));
                return match found {
                    Some(obj) => ok(obj),
                    None => status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
                };
            }
            let items: Vec<Value> = s
                .collections
                .get(&path)
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default();
            ok(&json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": s.resource_version.to_string()},
                "items": items
            }))
        })
    }
}
