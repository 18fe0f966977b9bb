//! `qi-host inspect`: what a component is, and whether the host can run it.

use super::*;
use qi_guest_artifacts::*;

#[test]
fn a_core_module_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(
        &path,
        wat::parse_str("(module (func (export \"run\")))").unwrap(),
    )
    .unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "core WebAssembly module, not a component",
    );
}

#[test]
fn a_component_of_another_world_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.wasm");
    std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "does not export the `qi:agent/agent` world",
    );
}

#[test]
fn a_component_importing_what_the_host_lacks_names_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needs.wasm");
    let wat = r#"(component (import "acme:db/query@1.0.0" (instance (export "run" (func)))))"#;
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "acme:db/query",
    );
}

#[test]
fn shows_agent_info_imports_and_exports() {
    let o = qi_host(&["inspect", FILE_STATS_COMPONENT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"agent     file-stats 0.1.0 (Specialized)"),
        "{out}"
    );
    // Each list is the indented lines under its heading.
    let section = |heading: &str| -> Vec<&str> {
        lines
            .iter()
            .skip_while(|l| **l != heading)
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim())
            .collect()
    };
    let imports = section("imports");
    assert!(imports.contains(&"qi:agent/log@0.1.0"), "{out}");
    assert!(imports.contains(&"wasi:filesystem/preopens@0.2.6"), "{out}");
    assert_eq!(section("exports"), ["describe", "run"], "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("runnable  yes: targets qi:agent/agent@0.1.0")),
        "{out}"
    );
}
