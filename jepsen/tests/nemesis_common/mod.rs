//! Shared by the nemesis tests: what a run's nemesis did, read back from its history.

use std::path::Path;

/// The `action` of every nemesis event in the one report directory under `store`.
pub fn nemesis_actions(store: &Path) -> Vec<String> {
    let dir = std::fs::read_dir(store)
        .expect("the store exists")
        .next()
        .expect("one report directory")
        .unwrap()
        .path();
    let history = std::fs::read_to_string(dir.join("history.jsonl")).expect("history.jsonl");
    history
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter(|event| event["type"] == "nemesis")
        .map(|event| event["action"].as_str().unwrap_or_default().to_string())
        .collect()
}
