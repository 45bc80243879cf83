//! How the target table stores chunks (SPEC §10, §15): the embedding column's type,
//! the text search column, the indexes each partition gets and when they are
//! built, how a file's rows meet the document's earlier rows, the partition
//! interval and the storage parameter of every partition.

use time::{Date, Duration, Month};

/// The embedding column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbeddingType {
    /// `real[]`.
    Array,
    /// pgvector's `vector(dim)`.
    Vector(usize),
    /// pgvector's `halfvec(dim)` (0.7 or later): 2-byte elements.
    Halfvec(usize),
}

impl EmbeddingType {
    /// The column's SQL type.
    pub(crate) fn sql(self) -> String {
        match self {
            EmbeddingType::Array => "real[]".to_string(),
            EmbeddingType::Vector(dim) => format!("vector({dim})"),
            EmbeddingType::Halfvec(dim) => format!("halfvec({dim})"),
        }
    }

    /// Whether the column is one of pgvector's types.
    pub(crate) fn pgvector(self) -> bool {
        !matches!(self, EmbeddingType::Array)
    }

    /// Whether elements are stored as f16.
    pub(crate) fn half(self) -> bool {
        matches!(self, EmbeddingType::Halfvec(_))
    }
}

/// VECTOR_METRIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Metric {
    /// `vector_cosine_ops`, `halfvec_cosine_ops`.
    Cosine,
    /// `vector_l2_ops`, `halfvec_l2_ops`.
    L2,
    /// `vector_ip_ops`, `halfvec_ip_ops`.
    Ip,
}

impl Metric {
    /// The metric's part of an operator class name.
    fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Ip => "ip",
        }
    }
}

/// When partitions get their indexes (HNSW and GIN alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexBuild {
    /// `maintain` builds them on partitions whose range ended and that are quiet.
    Sealed,
    /// Every partition has them from its creation.
    Always,
}

/// VECTOR_INDEX_BUILD and VECTOR_INDEX_QUIET_SECS: the policy of every index a
/// partition gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexPolicy {
    /// When they are built.
    pub(crate) build: IndexBuild,
    /// VECTOR_INDEX_QUIET_SECS.
    pub(crate) quiet_secs: u64,
}

/// An index that every partition gets, as VECTOR_INDEX and TEXT_SEARCH ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PartitionIndex {
    /// HNSW on `embedding` (VECTOR_INDEX=hnsw).
    Hnsw,
    /// GIN on `content_tsv` (TEXT_SEARCH).
    Gin,
}

impl PartitionIndex {
    /// `pairs` grouped by kind, HNSW first, each kind's partitions in their order;
    /// kinds without a partition are left out.
    pub(crate) fn grouped<S: AsRef<str>>(
        pairs: &[(PartitionIndex, S)],
    ) -> Vec<(PartitionIndex, Vec<&str>)> {
        [PartitionIndex::Hnsw, PartitionIndex::Gin]
            .into_iter()
            .map(|kind| {
                let parts: Vec<&str> = pairs
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, p)| p.as_ref())
                    .collect();
                (kind, parts)
            })
            .filter(|(_, parts)| !parts.is_empty())
            .collect()
    }

    /// How operators read it: `HNSW`, `GIN`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            PartitionIndex::Hnsw => "HNSW",
            PartitionIndex::Gin => "GIN",
        }
    }

    /// The access method.
    pub(crate) fn method(self) -> &'static str {
        match self {
            PartitionIndex::Hnsw => "hnsw",
            PartitionIndex::Gin => "gin",
        }
    }

    /// The column it indexes.
    pub(crate) fn column(self) -> &'static str {
        match self {
            PartitionIndex::Hnsw => "embedding",
            PartitionIndex::Gin => "content_tsv",
        }
    }

    /// The suffix of its name: `<partition>_<suffix>` on a partition,
    /// `<table>_<column>_<method>` on the parent.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            PartitionIndex::Hnsw => "hnsw",
            PartitionIndex::Gin => "content_tsv_gin",
        }
    }
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

/// Every storage setting of SPEC §10 and §15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Storage {
    /// EMBEDDING_TYPE (with EMBED_DIM for vector and halfvec).
    pub(crate) embedding: EmbeddingType,
    /// VECTOR_INDEX=hnsw.
    pub(crate) hnsw: bool,
    /// TEXT_SEARCH: the text search configuration of `content_tsv`, when set.
    pub(crate) text_search: Option<String>,
    /// When partitions get their indexes.
    pub(crate) index_policy: IndexPolicy,
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
            hnsw: false,
            text_search: None,
            index_policy: IndexPolicy {
                build: IndexBuild::Sealed,
                quiet_secs: 600,
            },
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

    /// The indexes every partition gets, in the order they are built.
    pub(crate) fn indexes(&self) -> Vec<PartitionIndex> {
        let mut v = Vec::new();
        if self.hnsw {
            v.push(PartitionIndex::Hnsw);
        }
        if self.text_search.is_some() {
            v.push(PartitionIndex::Gin);
        }
        v
    }

    /// The indexes that partitions get at creation (VECTOR_INDEX_BUILD=always).
    pub(crate) fn indexes_always(&self) -> Vec<PartitionIndex> {
        match self.index_policy.build {
            IndexBuild::Always => self.indexes(),
            IndexBuild::Sealed => Vec::new(),
        }
    }

    /// The HNSW operator class: `<vector|halfvec>_<metric>_ops`.
    pub(crate) fn hnsw_opclass(&self) -> String {
        let kind = if self.embedding.half() {
            "halfvec"
        } else {
            "vector"
        };
        format!("{kind}_{}_ops", self.metric.name())
    }

    /// `USING ...` of `index`: method, column and operator class.
    pub(crate) fn index_using(&self, index: PartitionIndex) -> String {
        match index {
            PartitionIndex::Hnsw => format!("hnsw (embedding {})", self.hnsw_opclass()),
            PartitionIndex::Gin => "gin (content_tsv)".to_string(),
        }
    }

    /// Whether vectors need a direction: a pgvector column under cosine distance,
    /// where an all-zero vector fails its file (SPEC §12).
    pub(crate) fn needs_direction(&self) -> bool {
        self.embedding.pgvector() && self.metric == Metric::Cosine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn halfvec_takes_its_own_operator_classes() {
        let mut s = Storage {
            embedding: EmbeddingType::Halfvec(3),
            hnsw: true,
            metric: Metric::L2,
            ..Storage::default()
        };
        assert_eq!(s.embedding.sql(), "halfvec(3)");
        assert_eq!(
            s.index_using(PartitionIndex::Hnsw),
            "hnsw (embedding halfvec_l2_ops)"
        );
        s.embedding = EmbeddingType::Vector(3);
        s.metric = Metric::Cosine;
        assert_eq!(s.hnsw_opclass(), "vector_cosine_ops");
        assert!(s.needs_direction());
        assert!(s.indexes_always().is_empty(), "sealed by default");
        s.text_search = Some("english".into());
        s.index_policy.build = IndexBuild::Always;
        assert_eq!(
            s.indexes_always(),
            vec![PartitionIndex::Hnsw, PartitionIndex::Gin]
        );
    }

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
