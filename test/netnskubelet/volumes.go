package netnskubelet

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// prepareVolumes fills a directory per volume of the pod under its state
// directory and returns them by volume name: projected volumes (the
// ServiceAccount token the ServiceAccount admission plugin adds to every
// pod — token, ca.crt, namespace — and any other projection), configMap,
// secret, downwardAPI, emptyDir, and hostPath as the host's path (the
// node's own directory for /etc/cni, /opt/cni and /run, see nodeOwnDirs).
// Another kind of volume is left out with a warning Event: its mounts are
// not made. The token is requested once (TokenRequest, bound to the pod) and
// never refreshed: the API server extends the admission plugin's
// one-hour tokens to a year.
func (k *Kubelet) prepareVolumes(ctx context.Context, pod *corev1.Pod, rt *podRuntime, env *envResolver) (map[string]string, error) {
	dirs := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(rt.logDir, "volumes", v.Name)
		var err error
		switch {
		case v.HostPath != nil:
			path, own := k.cni.root.path(v.HostPath.Path)
			if own {
				// The node's own directory exists on a real node;
				// here it is made on first use.
				if err := os.MkdirAll(path, 0o755); err != nil {
					return nil, fmt.Errorf("volume %s: %w", v.Name, err)
				}
			}
			dirs[v.Name] = path
			continue
		case v.EmptyDir != nil:
			err = os.MkdirAll(dir, 0o777)
		case v.Projected != nil:
			err = k.project(ctx, pod, env, dir, v.Projected.Sources, v.Projected.DefaultMode)
		case v.ConfigMap != nil:
			err = k.project(ctx, pod, env, dir, []corev1.VolumeProjection{{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: v.ConfigMap.LocalObjectReference, Items: v.ConfigMap.Items, Optional: v.ConfigMap.Optional,
			}}}, v.ConfigMap.DefaultMode)
		case v.Secret != nil:
			err = k.project(ctx, pod, env, dir, []corev1.VolumeProjection{{Secret: &corev1.SecretProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: v.Secret.SecretName}, Items: v.Secret.Items, Optional: v.Secret.Optional,
			}}}, v.Secret.DefaultMode)
		case v.DownwardAPI != nil:
			err = k.project(ctx, pod, env, dir, []corev1.VolumeProjection{{DownwardAPI: &corev1.DownwardAPIProjection{Items: v.DownwardAPI.Items}}}, v.DownwardAPI.DefaultMode)
		default:
			k.events.Event(rt.ref, corev1.EventTypeWarning, "FailedMount", fmt.Sprintf("volume %s: this kind of volume is not supported by netnskubelet; its mounts are left out", v.Name))
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		dirs[v.Name] = dir
	}
	return dirs, nil
}

// project writes a projected volume's files into dir.
func (k *Kubelet) project(ctx context.Context, pod *corev1.Pod, env *envResolver, dir string, sources []corev1.VolumeProjection, defaultMode *int32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the volume directory: %w", err)
	}
	mode := os.FileMode(0o644)
	if defaultMode != nil {
		mode = os.FileMode(*defaultMode)
	}
	write := func(path string, data []byte, itemMode *int32) error {
		m := mode
		if itemMode != nil {
			m = os.FileMode(*itemMode)
		}
		full := filepath.Join(dir, filepath.Clean("/"+path))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("creating the directory of %s: %w", path, err)
		}
		if err := os.WriteFile(full, data, m); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		return os.Chmod(full, m)
	}
	for _, src := range sources {
		switch {
		case src.ServiceAccountToken != nil:
			t := src.ServiceAccountToken
			req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: t.ExpirationSeconds,
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			}}
			if t.Audience != "" {
				req.Spec.Audiences = []string{t.Audience}
			}
			sa := pod.Spec.ServiceAccountName
			if sa == "" {
				sa = "default"
			}
			tok, err := k.cfg.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
			if err != nil {
				return fmt.Errorf("requesting a token of ServiceAccount %s: %w", sa, err)
			}
			if err := write(t.Path, []byte(tok.Status.Token), nil); err != nil {
				return err
			}
		case src.ConfigMap != nil, src.Secret != nil:
			data, items, optional, err := k.objectData(ctx, pod.Namespace, src)
			if err != nil {
				return err
			}
			if data == nil && optional {
				continue
			}
			if len(items) == 0 {
				for key := range data {
					items = append(items, corev1.KeyToPath{Key: key, Path: key})
				}
			}
			for _, it := range items {
				v, ok := data[it.Key]
				if !ok {
					if optional {
						continue
					}
					return fmt.Errorf("key %s not found", it.Key)
				}
				if err := write(it.Path, v, it.Mode); err != nil {
					return err
				}
			}
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				var v string
				var err error
				switch {
				case it.FieldRef != nil:
					v, err = env.field(it.FieldRef.FieldPath)
				case it.ResourceFieldRef != nil:
					v, _, err = env.resource(corev1.Container{}, it.ResourceFieldRef)
				}
				if err != nil {
					return fmt.Errorf("downward API %s: %w", it.Path, err)
				}
				if err := write(it.Path, []byte(v), it.Mode); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("a projection netnskubelet does not support (%+v)", src)
		}
	}
	return nil
}

// objectData reads the ConfigMap or Secret a projection names; data is nil
// when an optional one does not exist.
func (k *Kubelet) objectData(ctx context.Context, ns string, src corev1.VolumeProjection) (data map[string][]byte, items []corev1.KeyToPath, optional bool, err error) {
	if cm := src.ConfigMap; cm != nil {
		obj, err := k.cfg.Client.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && ptr.Deref(cm.Optional, false) {
			return nil, nil, true, nil
		}
		if err != nil {
			return nil, nil, false, fmt.Errorf("configmap %s: %w", cm.Name, err)
		}
		data = map[string][]byte{}
		for key, v := range obj.Data {
			data[key] = []byte(v)
		}
		for key, v := range obj.BinaryData {
			data[key] = v
		}
		return data, append([]corev1.KeyToPath{}, cm.Items...), ptr.Deref(cm.Optional, false), nil
	}
	s := src.Secret
	obj, err := k.cfg.Client.CoreV1().Secrets(ns).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && ptr.Deref(s.Optional, false) {
		return nil, nil, true, nil
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("secret %s: %w", s.Name, err)
	}
	return obj.Data, append([]corev1.KeyToPath{}, s.Items...), ptr.Deref(s.Optional, false), nil
}

// containerMounts resolves a container's volume mounts to host paths and
// makes sure each mount point exists on the host: a container shares the
// host's file system, so a mount path the host lacks (such as
// /var/run/secrets/kubernetes.io/serviceaccount) is created there, empty,
// and left for the next container that needs it.
func containerMounts(spec corev1.Container, volumes map[string]string) ([]bindMount, error) {
	var out []bindMount
	for _, vm := range spec.VolumeMounts {
		src, ok := volumes[vm.Name]
		if !ok {
			continue // a volume kind left out (see prepareVolumes)
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+vm.SubPath))
		}
		if !strings.HasPrefix(vm.MountPath, "/") {
			return nil, fmt.Errorf("mount path %q of volume %s is not absolute", vm.MountPath, vm.Name)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", vm.Name, err)
		}
		if st.IsDir() {
			err = os.MkdirAll(vm.MountPath, 0o755)
		} else if _, statErr := os.Stat(vm.MountPath); os.IsNotExist(statErr) {
			if err = os.MkdirAll(filepath.Dir(vm.MountPath), 0o755); err == nil {
				var f *os.File
				if f, err = os.OpenFile(vm.MountPath, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					err = f.Close()
				}
			}
		}
		if err != nil {
			return nil, fmt.Errorf("creating the mount point %s: %w", vm.MountPath, err)
		}
		out = append(out, bindMount{src: src, dst: vm.MountPath, readOnly: vm.ReadOnly})
	}
	return out, nil
}
