//! `weir crds` prints weir's CustomResourceDefinitions: the chart's `crds/`.

use std::process::Command;

#[test]
fn weir_crds_prints_the_charts_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("crds")
        .output()
        .expect("run weir crds");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let chart = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/helm/weir/crds/weir.dev.yaml"),
    )
    .unwrap();
    assert_eq!(text, chart);
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kind: "))
        .filter(|k| *k != "CustomResourceDefinition")
        .collect();
    assert_eq!(
        kinds,
        [
            "Workload",
            "Service",
            "KafkaGateway",
            "KafkaAuthorizationPolicy"
        ]
    );
}
