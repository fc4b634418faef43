//! Choosing training subsets: the "random real" baseline draws N images per class.

use super::DataError;
use crate::rng::Rng;

/// The indices of each class's images, class 0 first; labels of no class are left out.
pub fn indices_by_class(labels: &[u16], classes: usize) -> Vec<Vec<usize>> {
    let mut by_class = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        if let Some(list) = by_class.get_mut(label as usize) {
            list.push(i);
        }
    }
    by_class
}

/// Indices of `per_class` images of every class, drawn without replacement by `rng`,
/// grouped by class (class 0 first). Errors when a class has fewer images than asked.
pub fn random_per_class(
    labels: &[u16],
    classes: usize,
    per_class: usize,
    rng: &mut Rng,
) -> Result<Vec<usize>, DataError> {
    let mut by_class = indices_by_class(labels, classes);
    // Checked before anything is allocated: an absurd count is an error, not an abort.
    if let Some((class, list)) = by_class
        .iter()
        .enumerate()
        .find(|(_, l)| l.len() < per_class)
    {
        return Err(DataError::Invalid(format!(
            "class {class} has {} training images, fewer than the {per_class} asked for",
            list.len()
        )));
    }
    let mut chosen = Vec::with_capacity(classes * per_class);
    for list in by_class.iter_mut() {
        rng.shuffle(list);
        chosen.extend_from_slice(&list[..per_class]);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_per_class_without_replacement_and_repeats_with_seed() {
        let labels: Vec<u16> = (0..60).map(|i| (i % 3) as u16).collect();
        let a = random_per_class(&labels, 3, 5, &mut Rng::new(1)).unwrap();
        let b = random_per_class(&labels, 3, 5, &mut Rng::new(1)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 15);
        for (k, &i) in a.iter().enumerate() {
            assert_eq!(labels[i] as usize, k / 5);
        }
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 15);
        let err = random_per_class(&labels, 3, 21, &mut Rng::new(1)).unwrap_err();
        assert!(err.to_string().contains("fewer than the 21"), "{err}");
    }
}
