package netnskubelet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// The kubelet endpoint's timeouts: the real kubelet's defaults.
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommand.DefaultStreamCreationTimeout
)

// handler serves the kubelet API paths the API server proxies to:
// exec and portForward (SPDY or WebSocket, as k8s.io/cri-streaming
// negotiates), containerLogs and healthz.
func (k *Kubelet) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	exec := func(w http.ResponseWriter, r *http.Request) {
		opts, err := remotecommand.NewOptions(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cmd := r.URL.Query()["command"]
		key := r.PathValue("namespace") + "/" + r.PathValue("pod")
		remotecommand.ServeExec(w, r, k, key, r.PathValue("uid"), r.PathValue("container"), cmd, opts,
			streamIdleTimeout, streamCreationTimeout, remotecommand.SupportedStreamingProtocols)
	}
	mux.HandleFunc("/exec/{namespace}/{pod}/{container}", exec)
	mux.HandleFunc("/exec/{namespace}/{pod}/{uid}/{container}", exec)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.serveLogs)
	mux.HandleFunc("/portForward/{namespace}/{pod}", k.servePortForward)
	mux.HandleFunc("/portForward/{namespace}/{pod}/{uid}", k.servePortForward)
	return mux
}

// ExecInContainer runs cmd in a running container's namespaces with the
// container's environment (remotecommand.Executor). The command resolves
// through the image table like the container's own. With tty it gets a
// pseudo-terminal as its controlling terminal, resized as the client's
// changes (kubectl exec -it).
func (k *Kubelet) ExecInContainer(ctx context.Context, key, uid, containerName string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, timeout time.Duration) error {
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	if rt == nil || (uid != "" && string(rt.uid) != uid) {
		return fmt.Errorf("pod %s does not run on node %s", key, k.cfg.NodeName)
	}
	var c *container
	for _, a := range rt.apps {
		if a.spec.Name == containerName {
			c = a
		}
	}
	if c == nil {
		return fmt.Errorf("pod %s has no container %q", key, containerName)
	}
	c.mu.Lock()
	running := c.running
	c.mu.Unlock()
	if !running {
		return fmt.Errorf("container %s of pod %s is not running", containerName, key)
	}
	img, _ := k.cfg.Images.Lookup(c.spec.Image)
	argv, err := img.Resolve(cmd)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	p := exec.CommandContext(ctx, argv[0], argv[1:]...)
	p.Env = c.env
	p.Dir = "/"
	// The command leads its own process group (and session, with a
	// TTY), so cancelling kills what it started too.
	p.Cancel = func() error { return syscall.Kill(-p.Process.Pid, syscall.SIGKILL) }
	var outputDone chan struct{}
	if tty {
		master, slave, err := openPTY()
		if err != nil {
			return err
		}
		defer master.Close()
		defer slave.Close()
		p.Env = append(p.Env, "TERM=xterm")
		p.Stdin, p.Stdout, p.Stderr = slave, slave, slave
		p.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		if in != nil {
			go func() { _, _ = io.Copy(master, in) }()
		}
		outputDone = make(chan struct{})
		go func() {
			defer close(outputDone)
			if out != nil {
				_, _ = io.Copy(out, master) // ends with EIO once the command's side closes
			}
		}()
		go func() {
			for size := range resize {
				_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Height, Col: size.Width})
			}
		}()
	} else {
		p.Stdin = in
		if out != nil {
			p.Stdout = out
		}
		if errOut != nil {
			p.Stderr = errOut
		}
		p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := c.sandbox.start(p.Start); err != nil {
		return fmt.Errorf("starting %v in pod %s: %w", argv, key, err)
	}
	if tty {
		// Only the command holds the terminal now: its exit closes it.
		_ = p.Stdin.(*os.File).Close()
	}
	err = p.Wait()
	if outputDone != nil {
		select {
		case <-outputDone:
		case <-time.After(5 * time.Second): // a grandchild still holds the terminal
		}
	}
	if code := exitCode(err); code > 0 {
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	return err
}

// openPTY allocates a pseudo-terminal and returns its two ends.
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening /dev/ptmx: %w", err)
	}
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("unlocking the pseudo-terminal: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("reading the pseudo-terminal number: %w", err)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("opening the pseudo-terminal: %w", err)
	}
	return master, slave, nil
}

// serveLogs writes a container's log; with follow=true it keeps writing
// what the container prints until the client goes or the pod stops.
func (k *Kubelet) serveLogs(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("namespace") + "/" + r.PathValue("pod")
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	if rt == nil {
		http.Error(w, fmt.Sprintf("pod %s does not run on node %s", key, k.cfg.NodeName), http.StatusNotFound)
		return
	}
	name := r.PathValue("container")
	if strings.ContainsAny(name, "/.") {
		http.Error(w, "bad container name", http.StatusBadRequest)
		return
	}
	f, err := os.Open(filepath.Join(rt.logDir, name+".log"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain")
	if _, err := io.Copy(w, f); err != nil || r.URL.Query().Get("follow") != "true" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-rt.stopCh:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := io.Copy(w, f); err != nil {
			return
		}
	}
}
