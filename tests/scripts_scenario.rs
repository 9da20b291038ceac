//! `make tune` (scripts/tune.sh) in preview mode: it names every setting with its current value
//! and what it would become, changes nothing, and says how to raise the per-process limits.

use std::process::Command;

const KEYS: [&str; 10] = [
    "fs.nr_open",
    "fs.file-max",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_tw_reuse",
    "net.netfilter.nf_conntrack_max",
];

fn sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
        .ok()
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn tune_preview_names_every_setting_and_changes_nothing() {
    let before: Vec<Option<String>> = KEYS.iter().map(|k| sysctl(k)).collect();
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tune.sh"))
        .env("DRY_RUN", "1")
        .output()
        .expect("run scripts/tune.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for (key, now) in KEYS.iter().zip(&before) {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} missing from:\n{text}"));
        match now {
            None => assert!(line.contains("absent here"), "{line}"),
            Some(v) => assert!(
                line.contains(v.as_str())
                    && (line.contains("(would change)") || line.contains("(unchanged)")),
                "{line} (current value {v})"
            ),
        }
    }
    assert!(text.contains("limits of this shell: nofile"), "{text}");
    let after: Vec<Option<String>> = KEYS.iter().map(|k| sysctl(k)).collect();
    assert_eq!(before, after, "a preview must not change anything");
}
