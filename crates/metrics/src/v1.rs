//! The cgroup v1 metrics containerd exports per task (`io.containerd.cgroups.v1.Metrics`, from
//! the shim's Stats): names, units and help texts as containerd 1.6 gives them.

use containerd_shim_protos::cgroups::metrics::{BlkIOEntry, Metrics};

use super::family::{Family, Sample};

macro_rules! scalar {
    ($name:literal, $unit:literal, $help:literal, |$m:ident| $get:expr) => {
        Family {
            name: $name,
            unit: $unit,
            help: $help,
            labels: &[],
            samples: |$m: &Metrics| Sample::one($get),
        }
    };
}

macro_rules! memory {
    ($name:literal, $unit:literal, $help:literal, $field:ident) => {
        scalar!($name, $unit, $help, |m| m.memory.as_ref().map(|x| x.$field))
    };
}

macro_rules! memory_entry {
    ($name:literal, $unit:literal, $help:literal, $entry:ident . $field:ident) => {
        scalar!($name, $unit, $help, |m| m
            .memory
            .as_ref()
            .and_then(|x| x.$entry.as_ref())
            .map(|e| e.$field))
    };
}

macro_rules! blkio {
    ($name:literal, $unit:literal, $help:literal, $field:ident) => {
        Family {
            name: $name,
            unit: $unit,
            help: $help,
            labels: &["op", "device", "major", "minor"],
            samples: |m: &Metrics| {
                m.blkio
                    .as_ref()
                    .map(|b| b.$field.iter().map(blkio_sample).collect())
                    .unwrap_or_default()
            },
        }
    };
}

fn blkio_sample(e: &BlkIOEntry) -> Sample {
    Sample::new(
        e.value as f64,
        vec![
            e.op.clone(),
            e.device.clone(),
            e.major.to_string(),
            e.minor.to_string(),
        ],
    )
}

macro_rules! hugetlb {
    ($name:literal, $unit:literal, $help:literal, $field:ident) => {
        Family {
            name: $name,
            unit: $unit,
            help: $help,
            labels: &["page"],
            samples: |m: &Metrics| {
                m.hugetlb
                    .iter()
                    .map(|h| Sample::new(h.$field as f64, vec![h.pagesize.clone()]))
                    .collect()
            },
        }
    };
}

pub static FAMILIES: &[Family<Metrics>] = &[
    scalar!(
        "pids",
        "limit",
        "The limit to the number of pids allowed",
        |m| m.pids.as_ref().map(|p| p.limit)
    ),
    scalar!("pids", "current", "The current number of pids", |m| m
        .pids
        .as_ref()
        .map(|p| p.current)),
    scalar!("cpu_total", "nanoseconds", "The total cpu time", |m| m
        .cpu
        .as_ref()
        .and_then(|c| c.usage.as_ref())
        .map(|u| u.total)),
    scalar!(
        "cpu_kernel",
        "nanoseconds",
        "The total kernel cpu time",
        |m| m
            .cpu
            .as_ref()
            .and_then(|c| c.usage.as_ref())
            .map(|u| u.kernel)
    ),
    scalar!("cpu_user", "nanoseconds", "The total user cpu time", |m| m
        .cpu
        .as_ref()
        .and_then(|c| c.usage.as_ref())
        .map(|u| u.user)),
    Family {
        name: "per_cpu",
        unit: "nanoseconds",
        help: "The total cpu time per cpu",
        labels: &["cpu"],
        samples: |m: &Metrics| {
            m.cpu
                .as_ref()
                .and_then(|c| c.usage.as_ref())
                .map(|u| {
                    u.per_cpu
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Sample::new(*v as f64, vec![i.to_string()]))
                        .collect()
                })
                .unwrap_or_default()
        },
    },
    scalar!(
        "cpu_throttle_periods",
        "total",
        "The total cpu throttle periods",
        |m| m
            .cpu
            .as_ref()
            .and_then(|c| c.throttling.as_ref())
            .map(|t| t.periods)
    ),
    scalar!(
        "cpu_throttled_periods",
        "total",
        "The total cpu throttled periods",
        |m| m
            .cpu
            .as_ref()
            .and_then(|c| c.throttling.as_ref())
            .map(|t| t.throttled_periods)
    ),
    scalar!(
        "cpu_throttled_time",
        "nanoseconds",
        "The total cpu throttled time",
        |m| m
            .cpu
            .as_ref()
            .and_then(|c| c.throttling.as_ref())
            .map(|t| t.throttled_time)
    ),
    memory!("memory_cache", "bytes", "The cache amount used", cache),
    memory!("memory_rss", "bytes", "The rss amount used", rss),
    memory!(
        "memory_rss_huge",
        "bytes",
        "The rss_huge amount used",
        rss_huge
    ),
    memory!(
        "memory_mapped_file",
        "bytes",
        "The mapped_file amount used",
        mapped_file
    ),
    memory!("memory_dirty", "bytes", "The dirty amount", dirty),
    memory!(
        "memory_writeback",
        "bytes",
        "The writeback amount",
        writeback
    ),
    memory!("memory_pgpgin", "bytes", "The pgpgin amount", pg_pg_in),
    memory!("memory_pgpgout", "bytes", "The pgpgout amount", pg_pg_out),
    memory!("memory_pgfault", "bytes", "The pgfault amount", pg_fault),
    memory!(
        "memory_pgmajfault",
        "bytes",
        "The pgmajfault amount",
        pg_maj_fault
    ),
    memory!(
        "memory_inactive_anon",
        "bytes",
        "The inactive_anon amount",
        inactive_anon
    ),
    memory!(
        "memory_active_anon",
        "bytes",
        "The active_anon amount",
        active_anon
    ),
    memory!(
        "memory_inactive_file",
        "bytes",
        "The inactive_file amount",
        inactive_file
    ),
    memory!(
        "memory_active_file",
        "bytes",
        "The active_file amount",
        active_file
    ),
    memory!(
        "memory_unevictable",
        "bytes",
        "The unevictable amount",
        unevictable
    ),
    memory!(
        "memory_hierarchical_memory_limit",
        "bytes",
        "The hierarchical_memory_limit amount",
        hierarchical_memory_limit
    ),
    memory!(
        "memory_hierarchical_memsw_limit",
        "bytes",
        "The hierarchical_memsw_limit amount",
        hierarchical_swap_limit
    ),
    memory!(
        "memory_total_cache",
        "bytes",
        "The total_cache amount used",
        total_cache
    ),
    memory!(
        "memory_total_rss",
        "bytes",
        "The total_rss amount used",
        total_rss
    ),
    memory!(
        "memory_total_rss_huge",
        "bytes",
        "The total_rss_huge amount used",
        total_rss_huge
    ),
    memory!(
        "memory_total_mapped_file",
        "bytes",
        "The total_mapped_file amount used",
        total_mapped_file
    ),
    memory!(
        "memory_total_dirty",
        "bytes",
        "The total_dirty amount",
        total_dirty
    ),
    memory!(
        "memory_total_writeback",
        "bytes",
        "The total_writeback amount",
        total_writeback
    ),
    memory!(
        "memory_total_pgpgin",
        "bytes",
        "The total_pgpgin amount",
        total_pg_pg_in
    ),
    memory!(
        "memory_total_pgpgout",
        "bytes",
        "The total_pgpgout amount",
        total_pg_pg_out
    ),
    memory!(
        "memory_total_pgfault",
        "bytes",
        "The total_pgfault amount",
        total_pg_fault
    ),
    memory!(
        "memory_total_pgmajfault",
        "bytes",
        "The total_pgmajfault amount",
        total_pg_maj_fault
    ),
    memory!(
        "memory_total_inactive_anon",
        "bytes",
        "The total_inactive_anon amount",
        total_inactive_anon
    ),
    memory!(
        "memory_total_active_anon",
        "bytes",
        "The total_active_anon amount",
        total_active_anon
    ),
    memory!(
        "memory_total_inactive_file",
        "bytes",
        "The total_inactive_file amount",
        total_inactive_file
    ),
    memory!(
        "memory_total_active_file",
        "bytes",
        "The total_active_file amount",
        total_active_file
    ),
    memory!(
        "memory_total_unevictable",
        "bytes",
        "The total_unevictable amount",
        total_unevictable
    ),
    memory_entry!(
        "memory_usage_failcnt",
        "total",
        "The usage failcnt",
        usage.failcnt
    ),
    memory_entry!(
        "memory_usage_limit",
        "bytes",
        "The memory limit",
        usage.limit
    ),
    memory_entry!(
        "memory_usage_max",
        "bytes",
        "The memory maximum usage",
        usage.max
    ),
    memory_entry!(
        "memory_usage_usage",
        "bytes",
        "The memory usage",
        usage.usage
    ),
    memory_entry!(
        "memory_swap_failcnt",
        "total",
        "The swap failcnt",
        swap.failcnt
    ),
    memory_entry!("memory_swap_limit", "bytes", "The swap limit", swap.limit),
    memory_entry!(
        "memory_swap_max",
        "bytes",
        "The swap maximum usage",
        swap.max
    ),
    memory_entry!("memory_swap_usage", "bytes", "The swap usage", swap.usage),
    memory_entry!(
        "memory_kernel_failcnt",
        "total",
        "The kernel failcnt",
        kernel.failcnt
    ),
    memory_entry!(
        "memory_kernel_limit",
        "bytes",
        "The kernel limit",
        kernel.limit
    ),
    memory_entry!(
        "memory_kernel_max",
        "bytes",
        "The kernel maximum usage",
        kernel.max
    ),
    memory_entry!(
        "memory_kernel_usage",
        "bytes",
        "The kernel usage",
        kernel.usage
    ),
    memory_entry!(
        "memory_kerneltcp_failcnt",
        "total",
        "The kerneltcp failcnt",
        kernel_tcp.failcnt
    ),
    memory_entry!(
        "memory_kerneltcp_limit",
        "bytes",
        "The kerneltcp limit",
        kernel_tcp.limit
    ),
    memory_entry!(
        "memory_kerneltcp_max",
        "bytes",
        "The kerneltcp maximum usage",
        kernel_tcp.max
    ),
    memory_entry!(
        "memory_kerneltcp_usage",
        "bytes",
        "The kerneltcp usage",
        kernel_tcp.usage
    ),
    hugetlb!("hugetlb_usage", "bytes", "The hugetlb usage", usage),
    hugetlb!("hugetlb_failcnt", "total", "The hugetlb failcnt", failcnt),
    hugetlb!("hugetlb_max", "bytes", "The hugetlb maximum usage", max),
    blkio!(
        "blkio_io_merged_recursive",
        "total",
        "The blkio io merged recursive",
        io_merged_recursive
    ),
    blkio!(
        "blkio_io_queued_recursive",
        "total",
        "The blkio io queued recursive",
        io_queued_recursive
    ),
    blkio!(
        "blkio_io_service_bytes_recursive",
        "bytes",
        "The blkio io service bytes recursive",
        io_service_bytes_recursive
    ),
    blkio!(
        "blkio_io_service_time_recursive",
        "total",
        "The blkio io service time recursive",
        io_service_time_recursive
    ),
    blkio!(
        "blkio_io_serviced_recursive",
        "total",
        "The blkio io serviced recursive",
        io_serviced_recursive
    ),
    blkio!(
        "blkio_io_time_recursive",
        "total",
        "The blkio io time recursive",
        io_time_recursive
    ),
    blkio!(
        "blkio_sectors_recursive",
        "total",
        "The blkio sectors recursive",
        sectors_recursive
    ),
];
