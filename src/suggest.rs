//! "Did you mean": the one nearest-name rule for commands, flags, actions and
//! settings, so that a typo anywhere gets the same kind of hint.

/// The candidate nearest to `word` by edit distance, if it is near enough to be a
/// typo of it (at most 2 edits, or a quarter of the candidate's length).
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_suggested_and_far_ones_not() {
        let names = ["DATABASE_URL", "SPOOL_DIR", "WORKERS"];
        assert_eq!(
            closest("DATABSE_URL", names.iter().copied()),
            Some("DATABASE_URL")
        );
        assert_eq!(closest("WORKER", names.iter().copied()), Some("WORKERS"));
        assert_eq!(closest("TZ", names.iter().copied()), None);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
