//! How much memory message bodies may take in a replica. The broker pushes up to `prefetch`
//! deliveries per task ahead of their runs, and a body is in memory whole before its size can be
//! checked against `max_message_bytes`: the worst case is their product, summed over the tasks.
//! That product is capped by a budget, stated at start, so that a replica with many tasks or a
//! high concurrency cannot be driven out of memory by a burst of large messages.

/// The default budget: 1 GiB of message bodies per replica (1,000 runs in flight of the
/// default 1 MiB limit fit in it).
pub const DEFAULT_MESSAGE_BUDGET_BYTES: usize = 1 << 30;

/// The prefetch each task gets and what that costs at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Prefetch per task, in the order asked.
    pub(crate) prefetch: Vec<(String, u16)>,
    /// The most memory the bodies of pushed deliveries can take: Σ prefetch × limit.
    pub(crate) worst_case_bytes: usize,
    /// Whether the budget lowered a prefetch below what was asked.
    pub(crate) capped: bool,
}

/// Splits `budget` evenly across the tasks: each task's prefetch is what was asked, but no
/// more than its share allows (and never below 1, or the task would never receive anything).
pub(crate) fn plan(asked: &[(String, u16)], max_message_bytes: usize, budget: usize) -> Plan {
    let tasks = asked.len().max(1);
    let per_task = budget / tasks / max_message_bytes.max(1);
    let cap = u16::try_from(per_task).unwrap_or(u16::MAX).max(1);
    let prefetch: Vec<(String, u16)> = asked
        .iter()
        .map(|(task, wanted)| (task.clone(), (*wanted).min(cap)))
        .collect();
    let capped = prefetch
        .iter()
        .zip(asked)
        .any(|((_, got), (_, wanted))| got < wanted);
    let worst_case_bytes = prefetch
        .iter()
        .map(|(_, p)| usize::from(*p).saturating_mul(max_message_bytes))
        .fold(0usize, usize::saturating_add);
    Plan {
        prefetch,
        worst_case_bytes,
        capped,
    }
}

/// Bytes as MiB, for the start-up line.
pub(crate) fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(prefetches: &[u16]) -> Vec<(String, u16)> {
        prefetches
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("t{i}"), *p))
            .collect()
    }

    #[test]
    fn a_replica_within_its_budget_keeps_the_prefetch_it_asked_for() {
        let plan = plan(&asked(&[1000]), 1 << 20, DEFAULT_MESSAGE_BUDGET_BYTES);
        assert_eq!(plan.prefetch[0].1, 1000);
        assert_eq!(plan.worst_case_bytes, 1000 << 20);
        assert!(!plan.capped);
    }

    #[test]
    fn many_tasks_share_the_budget_and_their_prefetch_is_lowered_to_fit() {
        let plan = plan(&asked(&[1000, 1000, 1000, 1000]), 1 << 20, 1 << 30);
        assert!(plan.capped);
        assert!(plan.prefetch.iter().all(|(_, p)| *p == 256));
        assert!(plan.worst_case_bytes <= 1 << 30);
    }

    #[test]
    fn a_task_always_gets_at_least_one_delivery_even_over_budget() {
        let plan = plan(&asked(&[10]), 64 << 20, 1 << 20);
        assert_eq!(plan.prefetch[0].1, 1);
        assert!(plan.capped);
    }
}
