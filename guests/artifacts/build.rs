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

    fs::write(out_dir.join("guests.rs"), generated).expect("write $OUT_DIR/guests.rs");

    // What reaches every guest without being a source file in its dep-info: the workspace
    // manifest (profiles, and the member list a new guest is added to), the lock file, the WIT
    // contract and the SDK as a whole.
    rerun_if_changed.extend([
        workspace_root.join("Cargo.toml"),
        workspace_root.join("Cargo.lock"),
        workspace_root.join("wit"),
        workspace_root.join("guest-sdk"),
    ]);
    for path in rerun_if_changed {
        println!("cargo:rerun-if-changed={}", path.display());
    }
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
