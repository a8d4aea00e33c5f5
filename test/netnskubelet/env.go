package netnskubelet

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// envResolver computes containers' environments the way the kubelet does:
// a base PATH and HOSTNAME, the API server's service variables, envFrom,
// then env with $(VAR) references expanded against what came before.
type envResolver struct {
	ctx context.Context
	k   *Kubelet
	pod *corev1.Pod
	rt  *podRuntime
}

func newEnvResolver(ctx context.Context, k *Kubelet, pod *corev1.Pod, rt *podRuntime) *envResolver {
	return &envResolver{ctx: ctx, k: k, pod: pod, rt: rt}
}

// envVars is an ordered environment.
type envVars struct {
	names  []string
	values map[string]string
}

func (e *envVars) set(name, value string) {
	if _, ok := e.values[name]; !ok {
		e.names = append(e.names, name)
	}
	e.values[name] = value
}

func (e *envVars) list() []string {
	out := make([]string, 0, len(e.names))
	for _, n := range e.names {
		out = append(out, n+"="+e.values[n])
	}
	return out
}

func (r *envResolver) containerEnv(c corev1.Container) (*envVars, error) {
	vars := &envVars{values: map[string]string{}}
	vars.set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	vars.set("HOSTNAME", r.rt.hostname)
	// In-cluster clients find the API server through these.
	if svc, err := r.k.cfg.Client.CoreV1().Services(metav1.NamespaceDefault).Get(r.ctx, "kubernetes", metav1.GetOptions{}); err == nil && len(svc.Spec.Ports) > 0 {
		port := strconv.Itoa(int(svc.Spec.Ports[0].Port))
		vars.set("KUBERNETES_SERVICE_HOST", svc.Spec.ClusterIP)
		vars.set("KUBERNETES_SERVICE_PORT", port)
		vars.set("KUBERNETES_SERVICE_PORT_HTTPS", port)
	}
	for _, from := range c.EnvFrom {
		data, err := r.sourceData(from)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			vars.set(from.Prefix+k, v)
		}
	}
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			vars.set(ev.Name, expand(ev.Value, vars.values))
			continue
		}
		v, ok, err := r.valueFrom(c, ev.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", ev.Name, err)
		}
		if ok {
			vars.set(ev.Name, v)
		}
	}
	return vars, nil
}

func (r *envResolver) sourceData(from corev1.EnvFromSource) (map[string]string, error) {
	ns := r.pod.Namespace
	switch {
	case from.ConfigMapRef != nil:
		cm, err := r.k.cfg.Client.CoreV1().ConfigMaps(ns).Get(r.ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional(from.ConfigMapRef.Optional) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("envFrom configmap %s: %w", from.ConfigMapRef.Name, err)
		}
		return cm.Data, nil
	case from.SecretRef != nil:
		s, err := r.k.cfg.Client.CoreV1().Secrets(ns).Get(r.ctx, from.SecretRef.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && optional(from.SecretRef.Optional) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("envFrom secret %s: %w", from.SecretRef.Name, err)
		}
		out := map[string]string{}
		for k, v := range s.Data {
			out[k] = string(v)
		}
		return out, nil
	}
	return nil, nil
}

func optional(b *bool) bool { return b != nil && *b }

// valueFrom resolves one env source; ok is false for a missing optional
// key.
func (r *envResolver) valueFrom(c corev1.Container, src *corev1.EnvVarSource) (string, bool, error) {
	ns := r.pod.Namespace
	switch {
	case src.FieldRef != nil:
		v, err := r.field(src.FieldRef.FieldPath)
		return v, err == nil, err
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := r.k.cfg.Client.CoreV1().ConfigMaps(ns).Get(r.ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %s: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok && !optional(ref.Optional) {
			return "", false, fmt.Errorf("configmap %s has no key %s", ref.Name, ref.Key)
		}
		return v, ok, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := r.k.cfg.Client.CoreV1().Secrets(ns).Get(r.ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if apierrors.IsNotFound(err) && optional(ref.Optional) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %s: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok && !optional(ref.Optional) {
			return "", false, fmt.Errorf("secret %s has no key %s", ref.Name, ref.Key)
		}
		return string(v), ok, nil
	case src.ResourceFieldRef != nil:
		return r.resource(c, src.ResourceFieldRef)
	}
	return "", false, fmt.Errorf("unsupported env source %+v", *src)
}

// field resolves a downward API field path.
func (r *envResolver) field(path string) (string, error) {
	p := r.pod
	ips := make([]string, len(r.rt.ips))
	for i, a := range r.rt.ips {
		ips[i] = a.String()
	}
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP":
		return ips[0], nil
	case "status.podIPs":
		return strings.Join(ips, ","), nil
	case "status.hostIP":
		return r.k.cfg.NodeIPs[0].String(), nil
	case "status.hostIPs":
		hosts := make([]string, len(r.k.cfg.NodeIPs))
		for i, a := range r.k.cfg.NodeIPs {
			hosts[i] = a.String()
		}
		return strings.Join(hosts, ","), nil
	}
	for _, m := range []struct {
		prefix string
		from   map[string]string
	}{{"metadata.labels['", p.Labels}, {"metadata.annotations['", p.Annotations}} {
		if strings.HasPrefix(path, m.prefix) && strings.HasSuffix(path, "']") {
			return m.from[strings.TrimSuffix(strings.TrimPrefix(path, m.prefix), "']")], nil
		}
	}
	return "", fmt.Errorf("unsupported field path %q", path)
}

// resource resolves limits and requests; an unset limit is the node's
// capacity, as in the kubelet.
func (r *envResolver) resource(c corev1.Container, ref *corev1.ResourceFieldSelector) (string, bool, error) {
	name := ref.ContainerName
	if name != "" && name != c.Name {
		for _, o := range append(append([]corev1.Container{}, r.pod.Spec.InitContainers...), r.pod.Spec.Containers...) {
			if o.Name == name {
				c = o
			}
		}
	}
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok {
		return "", false, fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	list := c.Resources.Limits
	if kind == "requests" {
		list = c.Resources.Requests
	}
	q, ok := list[corev1.ResourceName(res)]
	if !ok {
		q, ok = resources()[corev1.ResourceName(res)]
		if !ok {
			return "", false, fmt.Errorf("unsupported resource %q", ref.Resource)
		}
	}
	// Rounded up to a whole number of divisors (default 1), as the
	// downward API does.
	div := int64(1000)
	if !ref.Divisor.IsZero() {
		div = ref.Divisor.MilliValue()
	}
	return strconv.FormatInt((q.MilliValue()+div-1)/div, 10), true, nil
}

// expand replaces $(NAME) with the variable's value when it is defined
// and "$$" with "$"; anything else stays as written, as Kubernetes does.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
				name := s[i+2 : i+2+end]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
					i += 2 + end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func expandAll(in []string, vars *envVars) []string {
	if in == nil {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, vars.values)
	}
	return out
}
