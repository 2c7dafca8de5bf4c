//! `crated config default` and `crated config dump`.

use std::any::Any;
use std::collections::HashMap;

use anyhow::Context;
use crated_config::Config;
use crated_plugin::Registration;

use crate::daemon::load_config;
use crate::plugins;

/// The config as TOML, with one `[plugins."<uri>"]` section per plugin that has a config.
fn render(
    config: &Config,
    regs: &[Registration],
    decoded: &HashMap<String, Box<dyn Any + Send + Sync>>,
) -> anyhow::Result<String> {
    let mut table = toml::Table::try_from(config).context("rendering the config")?;
    let mut sections = toml::Table::new();
    for reg in regs {
        let value = decoded.get(&reg.uri()).map(|b| b.as_ref());
        if let Some(section) = reg.dump_config(value) {
            let section = section.map_err(anyhow::Error::msg)?;
            sections.insert(reg.uri(), toml::Value::Table(section));
        }
    }
    table.insert("plugins".into(), toml::Value::Table(sections));
    Ok(toml::to_string(&table)?)
}

pub fn print_default() -> anyhow::Result<()> {
    let regs = plugins::registrations();
    print!("{}", render(&Config::default(), &regs, &HashMap::new())?);
    Ok(())
}

pub fn print_dump(cli: &crate::Cli) -> anyhow::Result<()> {
    let (config, regs, decoded) = load_config(cli)?;
    print!("{}", render(&config, &regs, &decoded)?);
    Ok(())
}
