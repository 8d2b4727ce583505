//! A Prometheus collector whose values are read at scrape time from the
//! counters the components already keep (atomics in the ingress, router,
//! publisher and broadcaster), so the hot path does not count twice.

use std::collections::HashMap;

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

/// The values of one family: label values (in the family's label order)
/// and the value.
pub(crate) type Samples = Vec<(Vec<String>, f64)>;

/// One metric family sampled by a closure.
pub(crate) struct Sampled {
    desc: Desc,
    kind: MetricType,
    labels: Vec<String>,
    sample: Box<dyn Fn() -> Samples + Send + Sync>,
}

impl Sampled {
    /// A counter (`_total`) or gauge family named `name` with `labels`.
    ///
    /// # Errors
    /// When the name or labels are not valid Prometheus identifiers.
    pub(crate) fn new(
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[&str],
        sample: impl Fn() -> Samples + Send + Sync + 'static,
    ) -> prometheus::Result<Self> {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        Ok(Self {
            desc: Desc::new(
                name.to_owned(),
                help.to_owned(),
                labels.clone(),
                HashMap::new(),
            )?,
            kind,
            labels,
            sample: Box::new(sample),
        })
    }
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics = (self.sample)()
            .into_iter()
            .map(|(values, v)| {
                let mut m = Metric::default();
                m.set_label(
                    self.labels
                        .iter()
                        .zip(values)
                        .map(|(name, value)| {
                            let mut pair = LabelPair::default();
                            pair.set_name(name.clone());
                            pair.set_value(value);
                            pair
                        })
                        .collect(),
                );
                if self.kind == MetricType::COUNTER {
                    let mut c = Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                } else {
                    let mut g = Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
                m
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(self.kind);
        family.set_metric(metrics);
        vec![family]
    }
}
