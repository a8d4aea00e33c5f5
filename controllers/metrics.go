package controllers

import (
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
)

// CounterSource reads per-policy packet counters from the kernel.
type CounterSource interface {
	Counters() ([]nft.PolicyCounter, error)
}

// syncMetrics are the agent's own Prometheus metrics.
type syncMetrics struct {
	duration prometheus.Histogram
	syncs    prometheus.Counter
	errors   prometheus.Counter
	changes  *prometheus.HistogramVec
	local    prometheus.Gauge
	isolated prometheus.Gauge
	policies prometheus.Gauge
	// clusterPods and clusterPolicies: local pods some
	// ClusterNetworkPolicy selects, and those policies.
	clusterPods, clusterPolicies prometheus.Gauge
	sets                         prometheus.Gauge
	elements                     prometheus.Gauge
	rules                        prometheus.Gauge
	lastSynced                   prometheus.Gauge
	// failing is the number of syncs in a row that failed; readiness
	// fails from DefaultFailuresUntilUnready on.
	failing prometheus.Gauge
	// cut counts the conntrack entries deleted because the committed
	// rules deny their connection; cutDuration times each sweep.
	cut         prometheus.Counter
	cutDuration prometheus.Histogram
}

func newSyncMetrics(reg prometheus.Registerer) (*syncMetrics, error) {
	m := &syncMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nftpol_sync_duration_seconds", Help: "Time of one sync: read the cache, build the model, compile, diff and commit.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		syncs:  prometheus.NewCounter(prometheus.CounterOpts{Name: "nftpol_syncs_total", Help: "Syncs committed (or found nothing to change)."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "nftpol_sync_errors_total", Help: "Syncs that failed; the previous table stayed in force."}),
		changes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "nftpol_sync_changes", Help: "Objects one sync changed in the kernel, by kind (sets, chains, elements).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}, []string{"kind"}),
		local:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_local_pods", Help: "Pods on this node that policies can select (not host-networked, running, with an address)."}),
		isolated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_isolated_pods", Help: "Local pods a NetworkPolicy isolates in at least one direction."}),
		clusterPods: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_cluster_policy_pods",
			Help: "Local pods a ClusterNetworkPolicy selects in at least one direction."}),
		clusterPolicies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_cluster_policies",
			Help: "ClusterNetworkPolicies that select at least one local pod."}),
		policies:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_policies", Help: "Policies that isolate at least one local pod."}),
		sets:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_sets", Help: "Sets and maps in the table."}),
		elements:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_set_elements", Help: "Elements in all sets and maps of the table."}),
		rules:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_rules", Help: "Rules in the table."}),
		lastSynced: prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_last_sync_timestamp_seconds", Help: "Unix time of the last successful sync."}),
		failing:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "nftpol_sync_consecutive_failures", Help: "Syncs in a row that failed (0 after a success); readiness fails from 3 on."}),
		cut: prometheus.NewCounter(prometheus.CounterOpts{Name: "nftpol_flows_cut_total",
			Help: "Established connections whose conntrack entry was deleted because a committed policy change denies them."}),
		cutDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "nftpol_flow_cut_duration_seconds", Help: "Time of one sweep of the conntrack table after a commit: dump, decide, delete.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
	}
	for _, c := range []prometheus.Collector{m.duration, m.syncs, m.errors, m.changes, m.local, m.isolated, m.clusterPods, m.clusterPolicies, m.policies, m.sets, m.elements, m.rules, m.lastSynced, m.failing, m.cut, m.cutDuration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

func (m *syncMetrics) observe(start time.Time, localPods int, model *selectors.Model, stats nft.CommitStats, err error) {
	if m == nil {
		return
	}
	m.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		m.errors.Inc()
		return
	}
	m.syncs.Inc()
	m.changes.WithLabelValues("sets").Observe(float64(stats.SetsAdded + stats.SetsDeleted))
	m.changes.WithLabelValues("chains").Observe(float64(stats.ChainsAdded + stats.ChainsRewritten + stats.ChainsDeleted))
	m.changes.WithLabelValues("elements").Observe(float64(stats.ElementsAdded + stats.ElementsDeleted))
	m.local.Set(float64(localPods))
	isolated, clusterPods := 0, 0
	for i := range model.Pods {
		p := &model.Pods[i]
		if p.IngressIsolated() || p.EgressIsolated() {
			isolated++
		}
		if !p.Cluster[selectors.Ingress].Empty() || !p.Cluster[selectors.Egress].Empty() {
			clusterPods++
		}
	}
	m.isolated.Set(float64(isolated))
	m.clusterPods.Set(float64(clusterPods))
	m.clusterPolicies.Set(float64(len(model.ClusterPolicies)))
	m.policies.Set(float64(len(model.Policies)))
	m.sets.Set(float64(stats.Sets))
	m.elements.Set(float64(stats.Elements))
	m.rules.Set(float64(stats.Rules))
	m.lastSynced.SetToCurrentTime()
}

// flowsCut records one sweep of the conntrack table.
func (m *syncMetrics) flowsCut(st FlowCutStats) {
	if m == nil {
		return
	}
	m.cut.Add(float64(st.Cut))
	m.cutDuration.Observe(st.Duration.Seconds())
}

// consecutiveFailures sets the gauge of syncs in a row that failed.
func (m *syncMetrics) consecutiveFailures(n int64) {
	if m == nil {
		return
	}
	m.failing.Set(float64(n))
}

// policyCollector exports the kernel's per-policy counters at scrape time.
type policyCollector struct {
	source  CounterSource
	log     logr.Logger
	packets *prometheus.Desc
	bytes   *prometheus.Desc
	// wouldDeny counts, for a policy in audit mode, the packets it would
	// deny if enforced (nft/audit.go).
	wouldDeny *prometheus.Desc
}

func newPolicyCollector(source CounterSource, log logr.Logger) *policyCollector {
	labels := []string{"policy", "direction", "verdict"}
	return &policyCollector{
		source:  source,
		log:     log,
		packets: prometheus.NewDesc("nftpol_policy_packets_total", "Packets a policy allowed, or denied at a pod it isolates (new connections only: established traffic is accepted earlier).", labels, nil),
		bytes:   prometheus.NewDesc("nftpol_policy_bytes_total", "Bytes of those packets.", labels, nil),
		wouldDeny: prometheus.NewDesc("nftpol_policy_audit_would_deny_packets_total",
			"Packets a policy in audit mode (annotation nftpol.io/mode: audit) would deny: allowed with every audit policy left out, denied with this one enforced (new connections only; counted on each side, egress or ingress, where it would be denied).",
			[]string{"policy", "direction"}, nil),
	}
}

func (c *policyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.wouldDeny
}

func (c *policyCollector) Collect(ch chan<- prometheus.Metric) {
	counters, err := c.source.Counters()
	if err != nil {
		c.log.Error(err, "reading policy counters")
		return
	}
	for _, pc := range counters {
		dir := pc.Direction.String()
		if pc.Audited {
			ch <- prometheus.MustNewConstMetric(c.wouldDeny, prometheus.CounterValue, float64(pc.WouldDenyPackets), pc.Policy, dir)
		}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(pc.AllowedPackets), pc.Policy, dir, "allowed")
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(pc.DeniedPackets), pc.Policy, dir, "denied")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(pc.AllowedBytes), pc.Policy, dir, "allowed")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(pc.DeniedBytes), pc.Policy, dir, "denied")
	}
}
