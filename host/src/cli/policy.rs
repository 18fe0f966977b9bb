//! `qi-host policy check|schema`.

use super::{PolicyArgs, PolicyCommand};

/// `qi-host policy`: 0 valid, 2 errors (printed on stdout, one per line, with the file).
pub(super) fn policy(args: PolicyArgs) -> i32 {
    use crate::security::{PolicyFormat, PolicySet};
    let file = match args.command {
        PolicyCommand::Schema => {
            println!("{}", crate::security::policy::schema::schema_text());
            return 0;
        }
        PolicyCommand::Check { file } => file,
    };
    // Bounded like `--policies`: `/dev/zero` or a huge file is refused, not read into memory.
    let text = match crate::security::policy::read_bounded(&file) {
        Ok(t) => t,
        Err(e) => {
            println!("{}: {e}", file.display());
            return 2;
        }
    };
    match PolicySet::parse(&text, PolicyFormat::of(&file)) {
        Ok(set) => {
            let p = set.policies();
            let rules: usize = p.iter().map(|p| p.rules.len()).sum();
            let active = p.iter().filter(|p| p.active).count();
            let mut tiers: Vec<i32> = p.iter().filter(|p| p.active).map(|p| p.priority).collect();
            tiers.sort_unstable();
            tiers.dedup();
            println!(
                "{}: valid: {} policies ({active} active), {rules} rules, {} priority tiers",
                file.display(),
                p.len(),
                tiers.len()
            );
            0
        }
        Err(errors) => {
            for e in &errors {
                println!("{}: {e}", file.display());
            }
            println!("{}: {} errors", file.display(), errors.len());
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_check_reads_no_more_than_a_policy_file_may_hold() {
        // An endless file of valid UTF-8: read whole, it would fill the memory.
        let check = |file: &str| {
            policy(PolicyArgs {
                command: PolicyCommand::Check { file: file.into() },
            })
        };
        assert_eq!(check("/dev/zero"), 2);
    }
}
