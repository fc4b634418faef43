//! The curves of a run, read back from its `metrics.jsonl`: what `curves.png` and the
//! viewer's curves view draw.

use std::collections::BTreeMap;

/// Keys of a step record that are not curves of their own.
const NOT_CURVES: &[&str] = &[
    "iteration",
    "seconds",
    "seconds_per_iteration",
    "memory_bytes",
];

/// The title of an objective's own curve, as `curves.png` and the viewer show it.
pub fn title(scalar: &str) -> String {
    match scalar {
        "lr" => "learned learning rate α (lr)".to_string(),
        other => other.replace('_', " "),
    }
}

/// The curves of a run's `metrics.jsonl`: `[iteration, value]` points.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    pub objective: Vec<[f64; 2]>,
    pub diversity: Vec<[f64; 2]>,
    pub adversary: Vec<[f64; 2]>,
    /// The objective's own numbers by name: what it learns (MTT's `lr`, α) and what it
    /// logs (DC's `network_loss`).
    pub scalars: BTreeMap<String, Vec<[f64; 2]>>,
    /// Mean evaluation accuracy.
    pub accuracy: Vec<[f64; 2]>,
    /// Its standard deviation over the evaluated networks, per point of `accuracy`.
    pub accuracy_std: Vec<f64>,
    /// Seconds since the start at the last logged iteration.
    pub seconds: Option<f64>,
}

impl Curves {
    /// Parses `metrics.jsonl`. Lines that are not (yet) whole JSON objects are skipped: a
    /// running distillation may be writing the last one.
    pub fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(it) = v.get("iteration").and_then(|i| i.as_f64()) else {
                continue;
            };
            let num = |key: &str| v.get(key).and_then(|x| x.as_f64());
            if let Some(eval) = v.get("eval") {
                if let Some(mean) = eval.get("mean").and_then(|m| m.as_f64()) {
                    c.accuracy.push([it, mean]);
                    c.accuracy_std
                        .push(eval.get("std").and_then(|s| s.as_f64()).unwrap_or(0.0));
                }
                continue;
            }
            let Some(fields) = v.as_object() else {
                continue;
            };
            for (key, x) in fields {
                let Some(x) = x.as_f64().filter(|x| x.is_finite()) else {
                    continue;
                };
                let series = match key.as_str() {
                    "objective" => &mut c.objective,
                    "diversity" => &mut c.diversity,
                    "adversary" => &mut c.adversary,
                    k if NOT_CURVES.contains(&k) => continue,
                    k => c.scalars.entry(k.to_string()).or_default(),
                };
                series.push([it, x]);
            }
            if let Some(s) = num("seconds") {
                c.seconds = Some(s);
            }
        }
        c
    }

    pub fn is_empty(&self) -> bool {
        self.objective.is_empty() && self.accuracy.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_losses_and_evaluations_and_skip_partial_lines() {
        let text = r#"{"iteration":1,"objective":10.5,"diversity":0.1,"adversary":2.0,"seconds":1.0}
{"iteration":2,"objective":8.0,"diversity":0.2,"adversary":1.5,"lr":0.01,"seconds":2.0,"memory_bytes":9}
{"iteration":2,"eval":{"accuracies":[0.5,0.7],"mean":0.6,"std":0.1}}
{"iteration":3,"objec"#;
        let c = Curves::parse(text);
        assert_eq!(c.objective, vec![[1.0, 10.5], [2.0, 8.0]]);
        assert_eq!(c.scalars.len(), 1, "{:?}", c.scalars);
        assert_eq!(c.scalars["lr"], vec![[2.0, 0.01]]);
        assert_eq!(c.adversary.len(), 2);
        assert_eq!(c.accuracy, vec![[2.0, 0.6]]);
        assert_eq!(c.accuracy_std, vec![0.1]);
        assert_eq!(c.seconds, Some(2.0));
        assert!(Curves::parse("").is_empty());
    }
}
