//! Runs side by side at equal storage: the rows of `haba compare`, read from each run's
//! [`Report`] (its own set and the baselines evaluated beside it).

use serde::Serialize;

use super::Report;
use crate::error::{Error, Result};

/// One distilled set (or baseline) and how it was evaluated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The run directory's name.
    pub run: String,
    /// The method (`haba-dm`, `dm`, ...) or the baseline's name (`random real`).
    pub name: String,
    pub dataset: String,
    /// Whether the set is factorized (bases and hallucinators).
    pub haba: bool,
    /// Floats stored, and how many real images per class they would hold.
    pub floats: usize,
    pub images_per_class: f64,
    /// Test accuracy over the evaluated networks, as fractions.
    pub mean: f64,
    pub std: f64,
    pub nets: usize,
    /// The evaluation protocol in words: model, networks, epochs, learning rate.
    pub protocol: String,
    /// Distillation iterations (none for a baseline).
    pub iterations: Option<u64>,
    /// What differs from the first row (storage, protocol), empty when comparable.
    pub differs: Vec<String>,
}

/// The rows of one run's report (the run named `run`): every set it evaluated.
pub fn rows_of_report(run: &str, report: &Report) -> Vec<Row> {
    report
        .sets
        .iter()
        .map(|set| Row {
            run: run.to_string(),
            name: set.name.clone(),
            dataset: report.dataset.clone(),
            haba: set.haba(),
            floats: set.storage.total_floats,
            images_per_class: set.storage.image_equivalents_per_class,
            mean: f64::from(set.result.mean),
            std: f64::from(set.result.std),
            nets: set.result.accuracies.len(),
            protocol: set.protocol(),
            iterations: set.iterations.map(|i| i as u64),
            differs: Vec::new(),
        })
        .collect()
}

/// Puts the rows of several runs in one table: refuses runs of different datasets, and
/// marks every row whose storage or protocol differs from the first row's.
pub fn compare(runs: Vec<Vec<Row>>) -> Result<Vec<Row>> {
    let mut rows: Vec<Row> = runs.into_iter().flatten().collect();
    let Some(first) = rows.first().cloned() else {
        return Err(Error::Config("no runs to compare".into()));
    };
    if let Some(other) = rows.iter().find(|r| r.dataset != first.dataset) {
        return Err(Error::Config(format!(
            "runs of different datasets cannot share a table: {} is {}, {} is {}",
            first.run, first.dataset, other.run, other.dataset
        )));
    }
    // HaBa sized to a budget of k images per class stores a little less than k (its
    // bases must be whole): the same budget is the same whole number of images rounded up.
    let budget = |r: &Row| (r.images_per_class - 1e-6).ceil();
    for r in &mut rows {
        if budget(r) != budget(&first) {
            r.differs.push(format!(
                "storage {:.2} images/class, not within {} like the first row",
                r.images_per_class,
                budget(&first)
            ));
        }
        if r.protocol != first.protocol {
            r.differs.push(format!("protocol {}", r.protocol));
        }
    }
    Ok(rows)
}

/// The table `haba compare` prints (a Markdown table, so it pastes into a README).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| run | method | HaBa | floats | images/class | accuracy % | evaluation | iterations |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let flag = if r.differs.is_empty() { "" } else { " (!)" };
        out += &format!(
            "| {} | {}{flag} | {} | {} | {:.2} | {:.2} ± {:.2} | {} | {} |\n",
            r.run,
            r.name,
            if r.haba { "yes" } else { "no" },
            r.floats,
            r.images_per_class,
            100.0 * r.mean,
            100.0 * r.std,
            r.protocol,
            r.iterations.map_or("-".into(), |i| i.to_string()),
        );
    }
    if let Some(first) = rows.first() {
        out += &format!("\nDataset: {}.\n", first.dataset);
    }
    for r in rows.iter().filter(|r| !r.differs.is_empty()) {
        out += &format!("(!) {} {}: {}\n", r.run, r.name, r.differs.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{EvalConfig, EvalResult};
    use crate::haba::Storage;
    use crate::report::EvaluatedSet;
    use crate::train::TrainConfig;

    fn set(name: &str, hall: usize, per_class: f64, epochs: usize, accs: Vec<f32>) -> EvaluatedSet {
        let image = crate::data::ImageShape {
            channels: 1,
            height: 1,
            width: 10,
        };
        let floats = (per_class * 100.0).round() as usize - hall;
        EvaluatedSet {
            name: name.into(),
            storage: Storage::new(floats, hall, image, 10),
            iterations: (name != "random real").then_some(300),
            evaluation: EvalConfig {
                model: "ConvNetW32".parse().unwrap(),
                nets: 2,
                train: TrainConfig::protocol(epochs, 0.01),
                ..EvalConfig::default()
            },
            result: EvalResult::from_accuracies(accs),
        }
    }

    fn report(dataset: &str, method: &str, hall: usize, per_class: f64, epochs: usize) -> Report {
        let mut r = Report::new(dataset, &[], "cpu: flex", 0);
        r.sets
            .push(set(method, hall, per_class, epochs, vec![0.7, 0.8]));
        r.sets.push(set("random real", 0, 2.0, epochs, vec![0.6]));
        r
    }

    #[test]
    fn rows_flag_what_differs_and_the_table_shows_them() {
        let a = rows_of_report("a", &report("fashion-mnist", "haba-dm", 20, 2.0, 300));
        let b = rows_of_report("b", &report("fashion-mnist", "dm", 0, 3.0, 500));
        // 1.88 images per class (HaBa at a budget of 2) and 2.00 share a budget.
        let c = rows_of_report("c", &report("fashion-mnist", "dm", 0, 1.88, 300));
        assert_eq!(a.len(), 2);
        assert!(a[0].haba && !a[1].haba);
        assert_eq!(
            (a[0].floats, a[0].nets, a[0].iterations),
            (200, 2, Some(300))
        );
        assert_eq!(a[1].iterations, None);
        let rows = compare(vec![a, b, c]).unwrap();
        assert!(rows[..2].iter().all(|r| r.differs.is_empty()));
        assert!(
            rows[4..].iter().all(|r| r.differs.is_empty()),
            "{:?}",
            rows[4]
        );
        assert_eq!(rows[2].differs.len(), 2, "{:?}", rows[2].differs);
        assert!(rows[2].differs[0].contains("3.00 images/class, not within 2"));
        assert!(rows[2].differs[1].contains("500"));
        assert!(rows[3].differs[0].contains("500"), "{:?}", rows[3]);
        let t = table(&rows);
        assert!(
            t.contains(
                "| a | haba-dm | yes | 200 | 2.00 | 75.00 ± 5.00 | \
                 2 x ConvNetW32, 300 epochs, lr 0.01 | 300 |"
            ),
            "{t}"
        );
        assert!(t.contains("| b | dm (!) |"), "{t}");
        assert!(t.contains("(!) b dm: storage 3.00"), "{t}");
    }

    /// A result that trained at a learned rate (MTT's α) shows that rate, and a row at
    /// another rate is flagged as another protocol.
    #[test]
    fn the_rate_a_result_trained_at_is_its_protocol() {
        let mut r = report("cifar10", "mtt", 0, 1.0, 300);
        r.sets[0].result.lr = Some(0.0666);
        let rows = compare(vec![rows_of_report("a", &r)]).unwrap();
        assert!(
            rows[0].protocol.ends_with("lr 0.0666"),
            "{}",
            rows[0].protocol
        );
        assert!(
            rows[1].protocol.ends_with("lr 0.01"),
            "{}",
            rows[1].protocol
        );
        assert!(
            rows[1].differs.iter().any(|d| d.contains("lr 0.01")),
            "{:?}",
            rows[1]
        );
    }

    #[test]
    fn different_datasets_and_broken_reports_are_refused() {
        let a = rows_of_report("a", &report("fashion-mnist", "dm", 0, 2.0, 300));
        let b = rows_of_report("b", &report("cifar10", "dm", 0, 2.0, 300));
        let err = compare(vec![a, b]).unwrap_err().to_string();
        assert!(
            err.contains("different datasets") && err.contains("cifar10"),
            "{err}"
        );
        assert!(compare(vec![]).is_err());
        // A report survives its own JSON; others are refused with the reason.
        let r = report("fashion-mnist", "dm", 0, 2.0, 300);
        let back = Report::from_json(&r.to_json()).unwrap();
        assert_eq!(back.to_json(), r.to_json());
        assert!(Report::from_json("{").unwrap_err().contains("not JSON"));
        let old = r#"{"dataset":"x","method":"dm"}"#;
        assert!(Report::from_json(old).unwrap_err().contains("older"));
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        v["sets"][0]["storage"] = serde_json::json!(3);
        let err = Report::from_json(&v.to_string()).unwrap_err();
        assert!(err.contains("not a valid report"), "{err}");
    }
}
