//! `rkcl demo`, the README's main command, on the embedded Kinesis.

use std::process::Command;

#[test]
fn demo_reports_every_record_back_and_nothing_lost() {
    let output = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .args([
            "demo",
            "--records",
            "6000",
            "--json",
            "--lease-duration",
            "2s",
        ])
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["produced"], 6000);
    assert_eq!(report["consumed"], 6000);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["out_of_order"], 0);
    // Plain and aggregated chunks: fewer Kinesis records than user records.
    let kinesis_records = report["kinesis_records"].as_u64().unwrap();
    assert!((1001..6000).contains(&kinesis_records), "{kinesis_records}");
    // Three workers, one killed, a fourth joined; the survivors hold the
    // leases at the end.
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 4);
    assert_eq!(workers[0]["killed"], true);
    let held: u64 = workers
        .iter()
        .map(|w| w["leases_at_end"].as_u64().unwrap())
        .sum();
    assert!(held >= 4, "{report}");
    assert_eq!(workers[0]["leases_at_end"], 0);
    assert!(!report["leases_over_time"].as_array().unwrap().is_empty());
}
