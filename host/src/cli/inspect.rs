//! `qi-host inspect`: what a component declares and whether the host can run it.

use super::InspectArgs;
use crate::agents::AgentHost;
use crate::engine::HostConfig;
use crate::error::Error;
use crate::spec::SubAgentSpecification;

pub(super) async fn inspect(args: InspectArgs) -> Result<i32, Error> {
    let host = AgentHost::new(HostConfig {
        max_live_agents: 4,
        ..HostConfig::default()
    })?;
    let component = host.load(&args.component)?;
    let engine = host.runtime().engine();
    let imports = component.imports(engine);
    let exports = component.exports(engine);
    let agent = host
        .spawn(&component, SubAgentSpecification::default())
        .await?;
    let info = agent.description().clone();
    drop(agent);
    if args.json {
        let v = serde_json::json!({
            "path": component.path,
            "sha256": component.sha256,
            "agent": info,
            "imports": imports,
            "exports": exports,
            "provides": crate::interfaces::PROVIDED,
            "runnable": true,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::System(e.into()))?
        );
    } else {
        println!("component {}", component.path.display());
        println!("sha256    {}", component.sha256);
        println!(
            "agent     {} {} ({:?})",
            info.name, info.version, info.agent_type
        );
        println!("about     {}", info.description);
        println!("capabilities {}", info.capabilities.join(", "));
        println!("imports");
        for i in &imports {
            println!("  {i}");
        }
        println!("exports");
        for e in &exports {
            println!("  {e}");
        }
        println!("host provides (besides WASI 0.2)");
        for p in crate::interfaces::PROVIDED {
            println!("  {p}");
        }
        println!(
            "runnable  yes: targets qi:agent/agent@0.1.0 and imports only what qi-host provides"
        );
    }
    Ok(0)
}
