//! How the target table stores chunks (SPEC §10): the embedding column's type, the
//! HNSW index and when it is built, how a file's rows meet the document's earlier
//! rows, the partition interval and the storage parameter of every partition.

use time::{Date, Duration, Month};

/// The embedding column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbeddingType {
    /// `real[]`.
    Array,
    /// pgvector's `vector(dim)`.
    Vector(usize),
}

impl EmbeddingType {
    /// The column's SQL type.
    pub(crate) fn sql(self) -> String {
        match self {
            EmbeddingType::Array => "real[]".to_string(),
            EmbeddingType::Vector(dim) => format!("vector({dim})"),
        }
    }
}

/// VECTOR_METRIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// `vector_cosine_ops`.
    Cosine,
    /// `vector_l2_ops`.
    L2,
    /// `vector_ip_ops`.
    Ip,
}

impl Metric {
    /// The HNSW operator class.
    pub(crate) fn opclass(self) -> &'static str {
        match self {
            Metric::Cosine => "vector_cosine_ops",
            Metric::L2 => "vector_l2_ops",
            Metric::Ip => "vector_ip_ops",
        }
    }
}

/// When partitions get their HNSW index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexBuild {
    /// `maintain` builds it on partitions whose range ended and that are quiet.
    Sealed,
    /// Every partition has it from its creation.
    Always,
}

/// VECTOR_INDEX with its build policy and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VectorIndex {
    /// When it is built.
    pub(crate) build: IndexBuild,
    /// VECTOR_INDEX_QUIET_SECS.
    pub(crate) quiet_secs: u64,
}

/// DOC_MODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DocMode {
    /// A file's rows are added.
    Append,
    /// A file's rows replace every earlier row of each doc_id it carries.
    Replace,
}

/// PARTITION_INTERVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interval {
    /// One partition per UTC day.
    Day,
    /// One partition per UTC month.
    Month,
}

impl Interval {
    /// The first day of the partition that holds `day`.
    pub(crate) fn start(self, day: Date) -> Date {
        match self {
            Interval::Day => day,
            Interval::Month => day.replace_day(1).unwrap_or(day),
        }
    }

    /// The first day after the partition that starts at `start`.
    pub(crate) fn next(self, start: Date) -> Date {
        match self {
            Interval::Day => start + Duration::days(1),
            Interval::Month => {
                let (year, month) = match start.month() {
                    Month::December => (start.year() + 1, Month::January),
                    m => (start.year(), m.next()),
                };
                Date::from_calendar_date(year, month, 1).unwrap_or(start + Duration::days(31))
            }
        }
    }

    /// The partition name's suffix for the partition starting at `start`.
    pub(crate) fn suffix(self, start: Date) -> String {
        match self {
            Interval::Day => format!(
                "p{:04}_{:02}_{:02}",
                start.year(),
                u8::from(start.month()),
                start.day()
            ),
            Interval::Month => format!("p{:04}_{:02}", start.year(), u8::from(start.month())),
        }
    }

    /// pg_partman's `p_interval` for this interval.
    pub(crate) fn partman(self) -> &'static str {
        match self {
            Interval::Day => "1 day",
            Interval::Month => "1 month",
        }
    }
}

/// Every storage setting of SPEC §10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Storage {
    /// EMBEDDING_TYPE (with EMBED_DIM for vector).
    pub(crate) embedding: EmbeddingType,
    /// VECTOR_INDEX=hnsw, with its policy; `None` for no index.
    pub(crate) index: Option<VectorIndex>,
    /// VECTOR_METRIC.
    pub(crate) metric: Metric,
    /// DOC_MODE.
    pub(crate) doc_mode: DocMode,
    /// PARTITION_INTERVAL.
    pub(crate) interval: Interval,
    /// TOAST_TUPLE_TARGET; 0 leaves PostgreSQL's default.
    pub(crate) toast_tuple_target: u32,
    /// HEAL_MAX_PARTITIONS.
    pub(crate) heal_max_partitions: usize,
    /// HEAL_MAX_FUTURE_DAYS.
    pub(crate) heal_max_future_days: u32,
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            embedding: EmbeddingType::Array,
            index: None,
            metric: Metric::Cosine,
            doc_mode: DocMode::Append,
            interval: Interval::Day,
            toast_tuple_target: 8160,
            heal_max_partitions: 400,
            heal_max_future_days: 31,
        }
    }
}

impl Storage {
    /// The `WITH (...)` clause of a new partition, empty when none applies.
    pub(crate) fn with_clause(&self) -> String {
        if self.toast_tuple_target == 0 {
            String::new()
        } else {
            format!(" WITH (toast_tuple_target = {})", self.toast_tuple_target)
        }
    }

    /// Whether new partitions get the HNSW index at creation.
    pub(crate) fn index_always(&self) -> Option<Metric> {
        self.index
            .filter(|i| i.build == IndexBuild::Always)
            .map(|_| self.metric)
    }

    /// Whether vectors need a direction: a vector column under cosine distance,
    /// where an all-zero vector fails its file (SPEC §12).
    pub(crate) fn needs_direction(&self) -> bool {
        matches!(self.embedding, EmbeddingType::Vector(_)) && self.metric == Metric::Cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn months_start_on_the_first_and_roll_over_the_year() {
        let m = Interval::Month;
        assert_eq!(m.start(date!(2001 - 02 - 17)), date!(2001 - 02 - 01));
        assert_eq!(m.next(date!(2001 - 12 - 01)), date!(2002 - 01 - 01));
        assert_eq!(m.suffix(date!(1999 - 07 - 01)), "p1999_07");
        assert_eq!(Interval::Day.suffix(date!(2026 - 12 - 03)), "p2026_12_03");
        assert_eq!(
            Interval::Day.next(date!(2026 - 12 - 31)),
            date!(2027 - 01 - 01)
        );
    }
}
