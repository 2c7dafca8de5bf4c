//! A metric family of the cgroups monitor as a table row: containerd's name (prefixed
//! `container_`, suffixed with the unit, as go-metrics names them), help text, the labels
//! beyond `container_id` and `namespace`, and how to read its samples out of the stats.

use std::collections::HashMap;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

pub struct Family<M: 'static> {
    pub name: &'static str,
    pub unit: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub samples: fn(&M) -> Vec<Sample>,
}

pub struct Sample {
    pub value: f64,
    pub labels: Vec<String>,
}

impl Sample {
    pub fn new(value: f64, labels: Vec<String>) -> Sample {
        Sample { value, labels }
    }

    /// The one unlabelled sample of a counter the stats may lack.
    pub fn one(value: Option<u64>) -> Vec<Sample> {
        value
            .map(|v| vec![Sample::new(v as f64, vec![])])
            .unwrap_or_default()
    }
}

impl<M> Family<M> {
    pub fn full_name(&self) -> String {
        if self.unit.is_empty() {
            format!("container_{}", self.name)
        } else {
            format!("container_{}_{}", self.name, self.unit)
        }
    }
}

/// The families of one scrape, filled task by task.
#[derive(Default)]
pub struct Scrape {
    gauges: HashMap<String, GaugeVec>,
    order: Vec<String>,
}

impl Scrape {
    /// Adds one task's samples of every family in `table`.
    pub fn add<M>(&mut self, table: &[Family<M>], id: &str, namespace: &str, stats: &M) {
        for family in table {
            for sample in (family.samples)(stats) {
                let mut labels = vec![id, namespace];
                labels.extend(sample.labels.iter().map(String::as_str));
                let gauge = self.family(family.full_name(), family.help, family.labels);
                if let Some(g) = gauge.and_then(|g| g.get_metric_with_label_values(&labels).ok()) {
                    g.set(sample.value);
                }
            }
        }
    }

    /// One sample of a family without a table row (the OOM counter).
    pub fn add_one(&mut self, name: &str, help: &str, id: &str, namespace: &str, value: f64) {
        let gauge = self.family(name.to_owned(), help, &[]);
        if let Some(g) = gauge.and_then(|g| g.get_metric_with_label_values(&[id, namespace]).ok()) {
            g.set(value);
        }
    }

    /// The family by name, made on first use (None only if a table row is malformed).
    fn family(&mut self, name: String, help: &str, extra: &[&str]) -> Option<&GaugeVec> {
        if !self.gauges.contains_key(&name) {
            let mut labels = vec!["container_id", "namespace"];
            labels.extend_from_slice(extra);
            let gauge = match GaugeVec::new(Opts::new(name.clone(), help), &labels) {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!("metric family {name}: {e}");
                    return None;
                }
            };
            self.order.push(name.clone());
            self.gauges.insert(name.clone(), gauge);
        }
        self.gauges.get(&name)
    }

    pub fn finish(self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = self
            .order
            .iter()
            .filter_map(|name| self.gauges.get(name))
            .flat_map(|gauge| gauge.collect())
            .collect();
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}
