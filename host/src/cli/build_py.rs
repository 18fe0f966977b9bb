//! `qi-host build-py`: builds a Python agent into a component with componentize-py, against
//! the WIT this binary was built with (see the `qi-build-py` crate).

use std::path::PathBuf;

/// Arguments of `qi-host build-py`.
#[derive(Debug, clap::Args)]
pub struct BuildPyArgs {
    /// The app module: a Python file defining exactly one subclass of `qi_agent.Agent`. Its
    /// directory is on the Python path (modules beside it can be imported, and are bundled).
    pub app: PathBuf,
    /// Where to write the component (written atomically). Default: the app's name with
    /// `.wasm`, beside it.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The componentize-py executable. Default: $QI_COMPONENTIZE_PY, else `componentize-py`
    /// on PATH.
    #[arg(long, value_name = "PATH")]
    pub componentize_py: Option<PathBuf>,
    /// Stop componentize-py (and everything it started) after this many seconds; from 1 to
    /// 86400. A build takes 10 to 30 s.
    #[arg(long, value_name = "SECONDS", default_value_t = qi_build_py::DEFAULT_BUILD_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_secs: u64,
}

/// Builds the component; prints where it went, or the error (exit code 2).
pub fn build_py(args: BuildPyArgs) -> i32 {
    let output = args
        .output
        .unwrap_or_else(|| args.app.with_extension("wasm"));
    let options = qi_build_py::BuildOptions {
        componentize_py: args.componentize_py,
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        ..qi_build_py::BuildOptions::new(args.app, output)
    };
    match qi_build_py::build(&options) {
        Ok(built) => {
            println!(
                "built {} ({:.1} MB, module `{}`); run it with `qi-host run-agent {} --task ...`",
                built.output.display(),
                built.bytes as f64 / 1e6,
                built.module,
                built.output.display(),
            );
            0
        }
        Err(error) => {
            eprintln!("error: {error}");
            2
        }
    }
}
