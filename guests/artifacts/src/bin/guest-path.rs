//! Prints the path of a bundled guest component, e.g. `guest-path file-stats`, so that a
//! newcomer can run a bundled agent without knowing where the build put it.

fn main() {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: guest-path NAME   (one of: {})", names());
        std::process::exit(2);
    };
    match qi_guest_artifacts::ALL_GUESTS
        .iter()
        .find(|(n, _)| *n == name)
    {
        Some((_, path)) => println!("{path}"),
        None => {
            eprintln!(
                "error: no bundled guest named `{name}`; bundled: {}",
                names()
            );
            std::process::exit(2);
        }
    }
}

fn names() -> String {
    qi_guest_artifacts::ALL_GUESTS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
