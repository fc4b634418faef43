//! The library names settings as a run's `config.toml` does (`` `hallucinators = 0` ``,
//! `` `device = cpu` ``); the command line speaks of flags. This turns one into the other
//! in the messages a command prints: every backticked setting that has a flag becomes
//! that flag, the rest (settings only a `--config` file sets) stay as they are.

/// A setting and the flag that sets it; `None` for a value: the flag takes it
/// (`--ipc 3`). Switches name their flag per value.
const FLAGS: &[(&str, Option<&str>, &str)] = &[
    ("haba", Some("false"), "--no-haba"),
    ("haba", Some("true"), "--haba"),
    ("contrastive", Some("false"), "--no-contrastive"),
    ("single_channel", Some("true"), "--single-channel"),
    ("budget_equal", Some("true"), "--budget-equal"),
    ("near_identity", Some("true"), "--near-identity"),
    ("ipc", None, "--ipc"),
    ("hallucinators", None, "--hallucinators"),
    ("kernel", None, "--kernel"),
    ("init", None, "--init"),
    ("iterations", None, "--iterations"),
    ("lr_bases", None, "--lr-bases"),
    ("lr_hallucinators", None, "--lr-hallucinators"),
    ("dsa", None, "--dsa"),
    ("preprocess", None, "--preprocess"),
    ("dataset", None, "--dataset"),
    ("method", None, "--method"),
    ("eval_every", None, "--eval-every"),
    ("checkpoint_every", None, "--checkpoint-every"),
    ("eval.nets", None, "--eval-nets"),
    ("eval.epochs", None, "--eval-epochs"),
    ("eval.model", None, "--eval-model"),
    ("contrastive_weights.cos", None, "--lambda-cos"),
    ("contrastive_weights.cls", None, "--lambda-cls"),
    ("contrastive_weights.like", None, "--lambda-like"),
    ("contrastive_weights.con", None, "--lambda-con"),
    ("objective.batch_real", None, "--batch-real"),
    ("objective.embedder", None, "--embedder"),
    ("objective.views", None, "--views"),
    ("objective.buffer", None, "--buffer"),
    ("objective.student", None, "--model"),
    ("objective.network", None, "--model"),
    ("objective.syn_steps", None, "--syn-steps"),
    ("objective.expert_epochs", None, "--expert-epochs"),
    ("objective.max_start_epoch", None, "--max-start-epoch"),
    ("objective.lr_teacher", None, "--lr-teacher"),
    ("objective.lr_lr", None, "--lr-lr"),
    ("objective.batch_syn", None, "--batch-syn"),
    ("objective.unroll", None, "--unroll"),
    ("objective.recompute_memory_mb", None, "--recompute-memory"),
    ("objective.dis_metric", None, "--dis-metric"),
    ("objective.outer_loop", None, "--outer-loop"),
    ("objective.inner_loop", None, "--inner-loop"),
    ("objective.lr_net", None, "--lr-net"),
    ("objective.batch_train", None, "--batch-train"),
    ("device", None, "--device"),
    ("seed", None, "--seed"),
    ("download", None, "haba datasets --download"),
];

/// The context of an error in a `--config` file: its message names the file's keys,
/// which stay settings (no flag phrasing).
#[derive(Debug)]
pub struct InConfigFile(pub std::path::PathBuf);

impl std::fmt::Display for InConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in {}", self.0.display())
    }
}

/// How a command's error is printed: settings the library names become flags, except
/// in an error about a config file's keys.
pub fn message(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    if err.downcast_ref::<InConfigFile>().is_some() {
        text
    } else {
        phrase(&text)
    }
}

/// `message` with each `` `setting` `` or `` `setting = value` `` that has a flag written
/// as that flag (`` `--ipc 3` ``).
pub fn phrase(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find('`') {
        let Some(len) = rest[open + 1..].find('`') else {
            break;
        };
        let inside = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..open]);
        out.push('`');
        out.push_str(&flag_of(inside).unwrap_or_else(|| inside.to_string()));
        out.push('`');
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The flag form of one setting (`ipc`, `ipc = 3`), if it has one.
fn flag_of(setting: &str) -> Option<String> {
    let (key, value) = match setting.split_once(" = ") {
        Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
        None => (setting.trim(), None),
    };
    if let Some(v) = value
        && let Some((.., flag)) = FLAGS.iter().find(|f| f.0 == key && f.1 == Some(v))
    {
        return Some(flag.to_string());
    }
    let (.., flag) = FLAGS.iter().find(|f| f.0 == key && f.1.is_none())?;
    Some(match value {
        Some(v) => format!("{flag} {v}"),
        None => flag.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn settings_become_flags_and_the_rest_stay() {
        assert_eq!(
            phrase("`hallucinators = 0`: or set `haba = false` (see `momentum_bases`)"),
            "`--hallucinators 0`: or set `--no-haba` (see `momentum_bases`)"
        );
        assert_eq!(
            phrase("asked for with `device = cpu`; `objective.syn_steps`"),
            "asked for with `--device cpu`; `--syn-steps`"
        );
        assert_eq!(phrase("an odd ` quote"), "an odd ` quote");
        assert_eq!(
            phrase("`download = \"mnist\"`"),
            "`haba datasets --download mnist`"
        );
    }

    /// Every flag the table names exists on `haba distill` (or is a global one).
    #[test]
    fn every_flag_exists() {
        let cli = super::super::Cli::command();
        let distill = cli.find_subcommand("distill").unwrap();
        let datasets = cli.find_subcommand("datasets").unwrap();
        for (key, _, flag) in FLAGS {
            let (cmd, long) = match flag.strip_prefix("haba datasets --") {
                Some(long) => (datasets, long),
                None => (distill, flag.trim_start_matches("--")),
            };
            let found = cmd
                .get_arguments()
                .chain(cli.get_arguments())
                .any(|a| a.get_long() == Some(long));
            assert!(found, "{key}: no flag {flag}");
        }
    }
}
