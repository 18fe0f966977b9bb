//! Builds every bundled guest (`guests/*` except this crate) for `wasm32-wasip2` with one inner
//! `cargo build`, then generates `$OUT_DIR/guests.rs` with the path of each component.
//!
//! The inner build uses its own target directory (`<target>/guests`), so it never waits on the
//! lock the outer build holds, and it drops the outer build's RUSTFLAGS and compiler wrappers,
//! which are meant for the host target.

use std::collections::BTreeSet;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "guest";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guests_dir = manifest_dir
        .parent()
        .expect("guests/ directory")
        .to_path_buf();
    let workspace_root = guests_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    let guests = discover_guests(&guests_dir);
    check_target_installed();

    let guest_target_dir = outer_target_dir(&out_dir).join("guests");
    build_guests(&workspace_root, &guest_target_dir, &guests);

    let artifact_dir = guest_target_dir.join(TARGET).join(PROFILE);
    let mut rerun_if_changed = BTreeSet::new();
    let mut generated = String::new();
    for guest in &guests {
        let wasm = artifact_dir.join(format!("{}.wasm", guest.lib_name()));
        assert!(
            wasm.is_file(),
            "cargo reported success but {} does not exist",
            wasm.display()
        );
        rerun_if_changed.extend(dep_info_sources(
            &artifact_dir.join(format!("{}.d", guest.lib_name())),
        ));
        rerun_if_changed.insert(guest.dir.join("Cargo.toml"));
        writeln!(
            generated,
            "/// Path of the `{name}` guest component (`guests/{name}`), built for `{TARGET}`.\n\
             pub const {konst}: &str = {path:?};",
            name = guest.name,
            konst = guest.const_name(),
            path = wasm.to_str().expect("UTF-8 target directory path"),
        )
        .unwrap();
    }

    generated.push_str(
        "/// Every bundled guest as `(name, component path)`, sorted by name.\n\
         pub const ALL_GUESTS: &[(&str, &str)] = &[\n",
    );
    for guest in &guests {
        writeln!(generated, "    ({:?}, {}),", guest.name, guest.const_name()).unwrap();
    }
    generated.push_str("];\n");

    generated.push_str(
        "/// Invokes `$mac!(name)` once per bundled guest, with the guest's name in snake_case\n\
         /// (`hello`, `file_stats`, ...), sorted by name.\n\
         ///\n\
         /// Tests use it to require one test module per guest at compile time: a guest without\n\
         /// a test is an unresolved path.\n\
         #[macro_export]\n\
         macro_rules! foreach_guest {\n    ($mac:ident) => {\n",
    );
    for guest in &guests {
        writeln!(generated, "        $mac!({});", guest.snake_name()).unwrap();
    }
    generated.push_str("    };\n}\n");

    generated.push_str(&python_guests(
        &guests_dir,
        &artifact_dir,
        &mut rerun_if_changed,
    ));

    fs::write(out_dir.join("guests.rs"), generated).expect("write $OUT_DIR/guests.rs");

    // What reaches every guest without being a source file in its dep-info: the workspace
    // manifest (profiles, and the member list a new guest is added to), the lock file, the WIT
    // contract and the SDK as a whole.
    rerun_if_changed.extend([
        workspace_root.join("Cargo.toml"),
        workspace_root.join("Cargo.lock"),
        workspace_root.join("wit"),
        workspace_root.join("guest-sdk"),
        workspace_root.join("guest-sdk-py"),
    ]);
    for path in rerun_if_changed {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Builds the Python guests (`guests/<name>/app.py`, no `Cargo.toml`) with componentize-py into
/// `guest_<name>.wasm` beside the Rust guests, so `guest:<name>` resolves for both. Returns the
/// generated Rust: one `<NAME>_COMPONENT` per guest, `PYTHON_GUESTS`, `PYTHON_GUESTS_SKIPPED`
/// and `foreach_python_guest!`.
///
/// Without componentize-py the guests are skipped with a warning that says how to install it
/// (and `PYTHON_GUESTS_SKIPPED` holds the reason, for tests to print), except under `CI=true`,
/// where a missing componentize-py fails the build: CI always builds and tests them. A guest
/// whose inputs (WIT, SDK, its `.py` files, the tool's version) are unchanged is not rebuilt.
fn python_guests(
    guests_dir: &Path,
    artifact_dir: &Path,
    rerun_if_changed: &mut BTreeSet<PathBuf>,
) -> String {
    let mut names: Vec<String> = fs::read_dir(guests_dir)
        .expect("list guests/")
        .map(|entry| entry.expect("read guests/ entry").path())
        .filter(|dir| dir.join("app.py").is_file() && !dir.join("Cargo.toml").exists())
        .filter_map(|dir| dir.file_name()?.to_str().map(str::to_owned))
        .collect();
    names.sort();
    println!("cargo:rerun-if-env-changed=QI_COMPONENTIZE_PY");
    let tool = qi_build_py::find_componentize_py();
    let skipped = match &tool {
        Ok(_) => None,
        Err(error) => {
            if env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true: the Python guests must be built, but {error}");
            }
            // Installing it later (into PATH) must rerun this script.
            println!("cargo:rerun-if-env-changed=PATH");
            println!(
                "cargo:warning=the Python guests ({}) are not built and their tests will be \
                 skipped: {error}",
                names.join(", ")
            );
            Some(error.to_string())
        }
    };
    let mut generated = String::new();
    let mut jobs = Vec::new();
    for name in &names {
        let guest = Guest {
            name: name.clone(),
            dir: guests_dir.join(name),
        };
        rerun_if_changed.insert(guest.dir.clone());
        let wasm = artifact_dir.join(format!("guest_{}.wasm", guest.snake_name()));
        writeln!(
            generated,
            "/// Path of the `{name}` Python guest component (`guests/{name}/app.py`), built \
             with componentize-py; absent when [`PYTHON_GUESTS_SKIPPED`] is `Some`.\n\
             pub const {konst}: &str = {path:?};",
            konst = guest.const_name(),
            path = wasm.to_str().expect("UTF-8 target directory path"),
        )
        .unwrap();
        if let Ok(tool) = &tool {
            jobs.push((guest.dir.join("app.py"), wasm, tool.clone()));
        }
    }
    fs::create_dir_all(artifact_dir).expect("create the guest artifact directory");
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|(app, wasm, tool)| std::thread::spawn(move || build_python(&app, &wasm, &tool)))
        .collect();
    for handle in handles {
        handle.join().expect("a Python guest build thread panicked");
    }
    writeln!(
        generated,
        "/// Why the Python guests were not built (componentize-py is missing), or `None` when \
         they were.\npub const PYTHON_GUESTS_SKIPPED: Option<&str> = {skipped:?};"
    )
    .unwrap();
    generated.push_str(
        "/// Every bundled Python guest as `(name, component path)`, sorted by name.\n\
         pub const PYTHON_GUESTS: &[(&str, &str)] = &[\n",
    );
    for name in &names {
        let konst = format!("{}_COMPONENT", name.replace('-', "_").to_uppercase());
        writeln!(generated, "    ({name:?}, {konst}),").unwrap();
    }
    generated.push_str(
        "];\n/// Invokes `$mac!(name)` once per bundled Python guest (snake_case names).\n\
         #[macro_export]\nmacro_rules! foreach_python_guest {\n    ($mac:ident) => {\n",
    );
    for name in &names {
        writeln!(generated, "        $mac!({});", name.replace('-', "_")).unwrap();
    }
    generated.push_str("    };\n}\n");
    generated
}

/// Builds one Python guest unless its digest file says its inputs are unchanged.
fn build_python(app: &Path, wasm: &Path, tool: &Path) {
    let version = qi_build_py::tool_version(tool).unwrap_or_else(|e| panic!("{e}"));
    let digest = qi_build_py::input_digest(app, &version).unwrap_or_else(|e| panic!("{e}"));
    let digest_file = wasm.with_extension("digest");
    if wasm.is_file() && fs::read_to_string(&digest_file).is_ok_and(|d| d == digest) {
        return;
    }
    qi_build_py::build(&qi_build_py::BuildOptions {
        componentize_py: Some(tool.to_path_buf()),
        ..qi_build_py::BuildOptions::new(app, wasm)
    })
    .unwrap_or_else(|e| panic!("building the Python guest {}: {e}", app.display()));
    fs::write(&digest_file, digest).expect("write the Python guest's digest");
}

/// One bundled guest crate: `guests/<name>`, package `guest-<name>`.
struct Guest {
    name: String,
    dir: PathBuf,
}

impl Guest {
    fn package(&self) -> String {
        format!("guest-{}", self.name)
    }

    /// What rustc names the `.wasm` file: the package name with `-` as `_`.
    fn lib_name(&self) -> String {
        self.package().replace('-', "_")
    }

    fn snake_name(&self) -> String {
        self.name.replace('-', "_")
    }

    fn const_name(&self) -> String {
        format!("{}_COMPONENT", self.snake_name().to_uppercase())
    }
}

/// Every directory of `guests/` that holds a crate, except this one, sorted by name.
fn discover_guests(guests_dir: &Path) -> Vec<Guest> {
    let mut guests: Vec<Guest> = fs::read_dir(guests_dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", guests_dir.display()))
        .map(|entry| entry.expect("read guests/ entry").path())
        .filter(|dir| dir.join("Cargo.toml").is_file())
        .filter(|dir| dir.file_name().is_some_and(|name| name != "artifacts"))
        .map(|dir| Guest {
            name: dir
                .file_name()
                .and_then(|name| name.to_str())
                .expect("UTF-8 guest directory name")
                .to_owned(),
            dir,
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        !guests.is_empty(),
        "no guest crates under {}",
        guests_dir.display()
    );
    guests
}

/// Fails early, with the fix, when the standard library for the guest target is missing.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", rustc.to_string_lossy()));
    assert!(
        output.status.success(),
        "`{} --print sysroot` failed: {}",
        rustc.to_string_lossy(),
        String::from_utf8_lossy(&output.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target_lib = sysroot.join("lib").join("rustlib").join(TARGET);
    if !target_lib.is_dir() {
        panic!(
            "the bundled guests are built for {TARGET}, but its standard library is not \
             installed ({} does not exist): run `rustup target add {TARGET}`",
            target_lib.display()
        );
    }
}

/// The outer build's target directory. `OUT_DIR` is
/// `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`.
fn outer_target_dir(out_dir: &Path) -> PathBuf {
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("unexpected OUT_DIR layout: {}", out_dir.display()));
    let above_profile = profile_dir.parent().expect("target directory");
    let cross_triple = env::var("TARGET").ok();
    if above_profile.file_name().and_then(|name| name.to_str()) == cross_triple.as_deref() {
        above_profile
            .parent()
            .expect("target directory")
            .to_path_buf()
    } else {
        above_profile.to_path_buf()
    }
}

fn build_guests(workspace_root: &Path, target_dir: &Path, guests: &[Guest]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER");
    for guest in guests {
        command.arg("--package").arg(guest.package());
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", cargo.to_string_lossy()));
    if !output.status.success() {
        panic!(
            "building the guests failed ({:?} in {}):\n{}",
            command,
            workspace_root.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The source files a Makefile-style dep-info file (`target: dep dep ...`) lists.
fn dep_info_sources(dep_info: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string(dep_info)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", dep_info.display()));
    let mut sources = Vec::new();
    for line in text.lines() {
        // Each rule is `<output>: <inputs>`; paths escape spaces as `\ `.
        let Some((_, inputs)) = line.split_once(": ") else {
            continue;
        };
        let mut current = String::new();
        let mut chars = inputs.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.extend(chars.next()),
                ' ' => {
                    if !current.is_empty() {
                        sources.push(PathBuf::from(std::mem::take(&mut current)));
                    }
                }
                _ => current.push(c),
            }
        }
        if !current.is_empty() {
            sources.push(PathBuf::from(current));
        }
    }
    sources
}
