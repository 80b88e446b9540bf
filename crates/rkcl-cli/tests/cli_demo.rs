//! `rkcl demo`, the README's main command, on the embedded Kinesis: the
//! story (workers in process, each event once the group has settled) and
//! the chaos run (`rkcl consume` processes, SIGKILLs, a split), both with
//! small numbers.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// Runs `rkcl demo` with `args`, `--json` and `--report`; returns the
/// report and the page. One demo at a time: each is a whole group of
/// workers whose timing the checks judge, and two at once on a small
/// machine distort each other's timings.
fn demo(name: &str, args: &[&str]) -> (Output, Value, String) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let page = std::env::temp_dir().join(format!("rkcl-{name}-{}.html", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_rkcl"))
        .arg("demo")
        .args(args)
        .arg("--json")
        .arg("--report")
        .arg(&page)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let report: Value = match stdout.lines().last() {
        Some(line) => serde_json::from_str(line).unwrap(),
        None => panic!(
            "no report; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    let html = read_and_remove(page);
    (output, report, html)
}

fn read_and_remove(path: PathBuf) -> String {
    let html = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    html
}

/// Checks that the page is well-formed: every element closed in order,
/// attributes quoted, text escaped, only the five entities the page uses.
fn assert_well_formed(html: &str) {
    let mut rest = html
        .strip_prefix("<!DOCTYPE html>")
        .expect("the page starts with a doctype");
    let mut open: Vec<String> = Vec::new();
    let check_text = |text: &str| {
        assert!(!text.contains('>'), "unescaped '>' in {text:?}");
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bad entity at {:?}",
                &entity[..entity.len().min(12)]
            );
        }
    };
    while let Some(start) = rest.find('<') {
        check_text(&rest[..start]);
        let end = start + rest[start..].find('>').expect("an unclosed tag");
        let tag = &rest[start + 1..end];
        assert!(!tag.contains('<'), "'<' inside the tag {tag:?}");
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes: {tag:?}"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name.trim()), "closing {name}");
        } else if !tag.ends_with('/') {
            open.push(tag.split_whitespace().next().unwrap().to_owned());
        }
        rest = &rest[end + 1..];
    }
    check_text(rest);
    assert!(open.is_empty(), "never closed: {open:?}");
}

fn kinds(report: &Value) -> Vec<String> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_story_settles_after_every_event_and_loses_nothing() {
    let (output, report, html) = demo(
        "story",
        &[
            "--records",
            "6000",
            "--rate",
            "2000",
            "--lease-duration",
            "2s",
            "--seed",
            "1",
        ],
    );
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["mode"], "story");
    assert_eq!(report["produced"], 6000);
    assert_eq!(report["consumed"], 6000);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["out_of_order"], 0);
    assert_eq!(report["checks"]["checkpoint_regressions"], 0);
    assert_eq!(report["checks"]["double_holders"], 0);
    // Plain and aggregated puts: fewer Kinesis records than user records.
    let kinesis_records = report["kinesis_records"].as_u64().unwrap();
    assert!((1001..6000).contains(&kinesis_records), "{kinesis_records}");

    // Every event, in order, each after the group settled from the one
    // before, and the group balanced at the end.
    assert_eq!(kinds(&report), ["kill", "split", "merge", "join", "leave"]);
    for event in report["events"].as_array().unwrap() {
        assert!(event["settled_after_seconds"].is_number(), "{event}");
    }
    assert_eq!(report["balanced_at_end"], true, "{report}");
    let leases: Vec<u64> = report["leases_at_end"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(leases.len(), 2, "two workers left: {report}");
    assert_eq!(leases.iter().sum::<u64>(), 4);
    assert!(leases.iter().all(|n| *n == 2), "{leases:?}");
    let workers = report["workers"].as_array().unwrap();
    let end = |id: &str| {
        workers.iter().find(|w| w["id"] == id).unwrap()["end"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(end("worker-1"), "killed");
    assert_eq!(end("worker-2"), "left");
    assert_eq!(end("worker-4"), "stopped");
    assert!(!report["timeline"].as_array().unwrap().is_empty());

    assert!(report.get("faults").is_none(), "no fault layer in a story");
    assert_well_formed(&html);
    assert!(html.contains("<svg"), "no chart");
    assert!(!html.contains("Faults injected"));
    for kind in ["kill", "split", "merge", "join", "leave"] {
        assert!(
            html.contains(&format!(r#"class="event event-{kind}""#)),
            "no {kind} marker"
        );
    }
}

#[test]
fn a_short_chaos_run_loses_nothing_and_keeps_order_and_checkpoints() {
    let (output, report, html) = demo(
        "chaos",
        &[
            "--chaos",
            "--records",
            "20000",
            "--rate",
            "4000",
            "--kill-every",
            "3s",
            "--lease-duration",
            "2s",
            "--seed",
            "7",
        ],
    );
    assert!(
        output.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["mode"], "chaos");
    // The chaos run's default faults hit the workers, seeded.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("faults injected (seed 7)"), "{stderr}");
    assert!(stderr.contains(" throttle "), "{stderr}");
    assert_eq!(report["produced"], 20000);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["out_of_order"], 0);
    let checks = &report["checks"];
    assert_eq!(checks["checkpoint_regressions"], 0, "{checks}");
    assert_eq!(checks["double_holders"], 0, "{checks}");
    assert_eq!(checks["duplicates"]["unexplained"], 0, "{checks}");
    assert!(checks["lease_samples"].as_u64().unwrap() > 10);

    let events = report["events"].as_array().unwrap();
    let kills: Vec<&Value> = events.iter().filter(|e| e["kind"] == "kill").collect();
    assert!(!kills.is_empty(), "{report}");
    for kill in &kills {
        assert!(kill["recovered_after_seconds"].is_number(), "{kill}");
    }
    assert!(kinds(&report).iter().any(|k| k == "split"));
    let workers = report["workers"].as_array().unwrap();
    assert!(workers.iter().any(|w| w["killed"] == true));
    assert!(
        workers
            .iter()
            .all(|w| !w["end"].as_str().unwrap().starts_with("failed")),
        "{report}"
    );
    assert_eq!(report["chaos"]["released_at_end"], true);
    assert!(report["chaos"]["restarts"].as_u64().unwrap() >= 1);

    // The faults are in the report: per kind, per operation, and as
    // streaks on the timeline, which the page shades.
    let faults = &report["faults"];
    assert_eq!(faults["seed"], 7, "{faults}");
    let throttles = faults["totals"]["throttle"].as_u64().unwrap();
    assert!(throttles > 0, "{faults}");
    let by_operation: u64 = faults["by_operation"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(what, _)| what.ends_with(" throttle"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_operation, throttles, "{faults}");
    let on_timeline: u64 = report["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["faults"]["throttle"].as_u64().unwrap())
        .sum();
    assert!(on_timeline > 0 && on_timeline <= throttles, "{faults}");
    let streaks = faults["streaks"].as_array().unwrap();
    assert!(!streaks.is_empty(), "{faults}");
    let in_streaks: u64 = streaks
        .iter()
        .map(|s| s["faults"]["throttle"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        in_streaks, on_timeline,
        "every failed request lies in a streak"
    );

    assert_well_formed(&html);
    assert!(html.contains(r#"class="event event-kill""#));
    assert!(html.contains(r#"class="event event-split""#));
    assert!(html.contains(r#"aria-label="Faults injected""#));
    assert_eq!(
        html.matches(r#"<rect class="fault-streak""#).count(),
        streaks.len(),
        "a band per streak"
    );
}
