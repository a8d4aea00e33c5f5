package test

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/testbed"
)

// windowWatch records what ran beside one packet-path window, to explain
// a window slower than its neighbours: the machine's CPU (all of it, the
// softirq share that is packet processing, and this process's), each
// agent's CPU (from /proc), GC cycles, syncs and conntrack sweeps (from
// its metrics, scraped outside the window: a scrape reads every rule's
// counter), the lines it logged, and the server node's conntrack entries.
// It reads everything before and after the window, never during it.
//
// It also gives the window's CPU per connection: this process's CPU (the
// client's connects and the server's answers, both in this process, with
// the kernel work done in their system calls) plus the machine's softirq
// time (the rest of the packet path), per connection. Unlike the rate, it
// does not fall when other work on the machine takes the CPU away.
type windowWatch struct {
	start      time.Time
	cpu        cpuTimes
	self       float64
	agents     []agentSnapshot
	agentCPU   []float64
	conntrack  int
	logOffsets []int64
}

// agentSnapshot is what one agent's metrics say at one moment.
type agentSnapshot struct {
	gcs, syncs, sweeps float64
}

// cpuTimes are /proc/stat's first line, in seconds: busy (all but idle
// and iowait) and softirq.
type cpuTimes struct{ busy, softirq float64 }

// userHZ is the unit of /proc/stat and /proc/PID/stat times.
const userHZ = 100

func readCPUTimes() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var t cpuTimes
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		// user nice system idle iowait irq softirq steal ...
		if i != 3 && i != 4 && i < 8 {
			t.busy += x / userHZ
		}
		if i == 6 {
			t.softirq = x / userHZ
		}
	}
	return t
}

// selfCPU is this process's user and system time, in seconds.
func selfCPU() float64 { return max(procCPU("/proc/self/stat"), 0) }

// procCPU is the user and system time of a process, in seconds, from its
// stat file; -1 when it cannot be read.
func procCPU(stat string) float64 {
	b, err := os.ReadFile(stat)
	if err != nil {
		return -1
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state is 0, utime 11, stime 12.
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / userHZ
}

// agentCPU is the user and system time of the agent serving metrics on
// addr, in seconds, read from /proc; -1 when it is not found.
func agentCPU(addr string) float64 {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmd, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmd), "--metrics-bind-address\x00"+addr+"\x00") {
			continue
		}
		if t := procCPU("/proc/" + p.Name() + "/stat"); t >= 0 {
			return t
		}
	}
	return -1
}

// conntrackCount is the number of conntrack entries in a namespace.
func conntrackCount(netns string) int {
	out, err := exec.Command("nsenter", "--net="+netns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").Output()
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return -1
	}
	return n
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func snapshotAgent(b testing.TB, a *testbed.Agent) agentSnapshot {
	m := scrape(b, "http://"+a.MetricsAddr+"/metrics")
	return agentSnapshot{gcs: m["go_gc_duration_seconds_count"], syncs: m["nftpol_syncs_total"], sweeps: m["nftpol_flow_sweeps_total"]}
}

// watchWindow starts watching a window; agents is nil when none runs.
func (pb *pathBench) watchWindow(agents []*testbed.Agent) *windowWatch {
	w := &windowWatch{self: selfCPU(), conntrack: conntrackCount(pb.bed.Node(pb.server.Node).NetNSPath)}
	for _, a := range agents {
		w.agents = append(w.agents, snapshotAgent(pb.b, a))
		off := int64(0)
		if fi, err := os.Stat(a.LogPath); err == nil {
			off = fi.Size()
		}
		w.logOffsets = append(w.logOffsets, off)
	}
	for _, a := range agents {
		w.agentCPU = append(w.agentCPU, agentCPU(a.MetricsAddr))
	}
	w.cpu, w.self, w.start = readCPUTimes(), selfCPU(), time.Now()
	return w
}

// end describes the window (one line, then one per line an agent logged)
// and returns its CPU per connection, in µs.
func (w *windowWatch) end(pb *pathBench, agents []*testbed.Agent, what string, conns int) (string, float64) {
	cpu, self, elapsed := readCPUTimes(), selfCPU(), time.Since(w.start).Seconds()
	agentsCPU := make([]float64, len(agents))
	for i, a := range agents {
		agentsCPU[i] = agentCPU(a.MetricsAddr) - w.agentCPU[i]
	}
	perConn := (self - w.self + cpu.softirq - w.cpu.softirq) / float64(max(conns, 1)) * 1e6
	var sb strings.Builder
	fmt.Fprintf(&sb, "window %-44s %8.1f conn/s %6.1f µs CPU/conn  load %s  cores busy %.2f (softirq %.2f, this process %.2f)  conntrack %d → %d",
		what, float64(conns)/elapsed, perConn, loadAverage(), (cpu.busy-w.cpu.busy)/elapsed, (cpu.softirq-w.cpu.softirq)/elapsed, (self-w.self)/elapsed,
		w.conntrack, conntrackCount(pb.bed.Node(pb.server.Node).NetNSPath))
	for i, a := range agents {
		now := snapshotAgent(pb.b, a)
		was := w.agents[i]
		fmt.Fprintf(&sb, "\n    agent %s: cpu %.3f s in the window; between its scrapes gc %.0f, syncs %.0f, sweeps %.0f", a.Node.Name,
			agentsCPU[i], now.gcs-was.gcs, now.syncs-was.syncs, now.sweeps-was.sweeps)
		if b, err := os.ReadFile(a.LogPath); err == nil && int64(len(b)) > w.logOffsets[i] {
			for _, line := range strings.Split(strings.TrimSpace(string(b[w.logOffsets[i]:])), "\n") {
				fmt.Fprintf(&sb, "\n      log: %.200s", line)
			}
		}
	}
	return sb.String(), perConn
}
