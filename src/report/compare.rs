//! Runs side by side at equal storage: the rows of `haba compare`, read from each run's
//! `report.json` (its own result and the baselines evaluated beside it).

use serde::Serialize;
use serde_json::Value;

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

/// The rows of one run directory's `report.json` (named `run`).
pub fn rows_of_report(run: &str, json: &str) -> Result<Vec<Row>> {
    let bad = |what: &str| Error::Config(format!("{run}/report.json: {what}"));
    let v: Value = serde_json::from_str(json).map_err(|e| bad(&format!("not JSON ({e})")))?;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let dataset = text(&v, "dataset").ok_or_else(|| bad("no dataset"))?;
    let eval = &v["settings"]["eval"];
    // The rate each result trained at (an MTT run's learned α, which older reports keep
    // only beside the run's result), else the configured one; an f32 either way, shown as
    // one ("0.01", not 0.00999...).
    let protocol = |result: &Value, learned: &Value| {
        let lr = result["lr"]
            .as_f64()
            .or(learned.as_f64())
            .or(eval["lr"].as_f64())
            .map_or("?".into(), |lr| (lr as f32).to_string());
        format!(
            "{} x {}, {} epochs, lr {lr}",
            eval["nets"],
            eval["model"].as_str().unwrap_or("?"),
            eval["epochs"],
        )
    };
    let row = |name: String, storage: &Value, result: &Value, learned: &Value, iterations| {
        let number = |v: &Value, key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(&format!("{name}: no {key}")))
        };
        Ok::<_, Error>(Row {
            run: run.to_string(),
            name: name.clone(),
            dataset: dataset.clone(),
            haba: number(storage, "hallucinator_floats")? > 0.0,
            floats: number(storage, "total_floats")? as usize,
            images_per_class: number(storage, "image_equivalents_per_class")?,
            mean: number(result, "mean")?,
            std: number(result, "std")?,
            nets: result["accuracies"].as_array().map_or(0, Vec::len),
            protocol: protocol(result, learned),
            iterations,
            differs: Vec::new(),
        })
    };
    let method = text(&v, "method").ok_or_else(|| bad("no method"))?;
    let mut rows = vec![row(
        method,
        &v["storage"],
        &v["result"],
        &v["learned_lr"],
        v["iterations"].as_u64(),
    )?];
    for b in v["baselines"].as_array().into_iter().flatten() {
        let name = text(b, "name").ok_or_else(|| bad("a baseline without a name"))?;
        rows.push(row(name, &b["storage"], &b["result"], &Value::Null, None)?);
    }
    Ok(rows)
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

    fn report(dataset: &str, method: &str, hall: usize, per_class: f64, epochs: usize) -> String {
        serde_json::json!({
            "method": method,
            "dataset": dataset,
            "iterations": 300,
            "settings": {"eval": {"model": "ConvNetW32", "nets": 2, "epochs": epochs, "lr": 0.01}},
            "storage": {"base_floats": 100, "hallucinator_floats": hall, "total_floats": 100 + hall,
                        "image_equivalents": per_class * 10.0,
                        "image_equivalents_per_class": per_class},
            "result": {"accuracies": [0.7, 0.8], "mean": 0.75, "std": 0.05},
            "baselines": [{"name": "random real",
                           "storage": {"base_floats": 100, "hallucinator_floats": 0,
                                       "total_floats": 100, "image_equivalents": 20.0,
                                       "image_equivalents_per_class": 2.0},
                           "result": {"accuracies": [0.6], "mean": 0.6, "std": 0.0}}],
        })
        .to_string()
    }

    #[test]
    fn rows_flag_what_differs_and_the_table_shows_them() {
        let a = rows_of_report("a", &report("fashion-mnist", "haba-dm", 20, 2.0, 300)).unwrap();
        let b = rows_of_report("b", &report("fashion-mnist", "dm", 0, 3.0, 500)).unwrap();
        // 1.88 images per class (HaBa at a budget of 2) and 2.00 share a budget.
        let c = rows_of_report("c", &report("fashion-mnist", "dm", 0, 1.88, 300)).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].haba && !a[1].haba);
        assert_eq!(
            (a[0].floats, a[0].nets, a[0].iterations),
            (120, 2, Some(300))
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
        assert!(rows[2].differs[1].contains("300") || rows[2].differs[1].contains("500"));
        let t = table(&rows);
        assert!(
            t.contains(
                "| a | haba-dm | yes | 120 | 2.00 | 75.00 ± 5.00 | \
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
        let mut v: Value = serde_json::from_str(&report("cifar10", "mtt", 0, 1.0, 300)).unwrap();
        v["result"]["lr"] = serde_json::json!(0.0666f32);
        let rows = compare(vec![rows_of_report("a", &v.to_string()).unwrap()]).unwrap();
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
        let a = rows_of_report("a", &report("fashion-mnist", "dm", 0, 2.0, 300)).unwrap();
        let b = rows_of_report("b", &report("cifar10", "dm", 0, 2.0, 300)).unwrap();
        let err = compare(vec![a, b]).unwrap_err().to_string();
        assert!(
            err.contains("different datasets") && err.contains("cifar10"),
            "{err}"
        );
        let err = rows_of_report("c", "{").unwrap_err().to_string();
        assert!(
            err.contains("c/report.json") && err.contains("not JSON"),
            "{err}"
        );
        let err = rows_of_report("d", r#"{"dataset":"x","method":"dm"}"#).unwrap_err();
        assert!(err.to_string().contains("no hallucinator_floats"), "{err}");
        assert!(compare(vec![]).is_err());
    }
}
