package cluster_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nftpol/nftpol/test/cluster"
)

// startVolumesPod creates a pod with one volume of each kind the kubelet
// supports besides the ServiceAccount token (which checkAgents reads):
// configMap (one key, as a file), secret (an item with its own mode),
// downwardAPI (the pod's labels), emptyDir, and hostPath (a directory the
// test creates). The mount paths are under a directory of the test's, as
// the kubelet creates missing mount points on the host (README).
func startVolumesPod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string) (name, mountDir string) {
	t.Helper()
	hostDir := t.TempDir()
	mountDir = t.TempDir()
	if err := os.WriteFile(filepath.Join(hostDir, "from-host"), []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	cs := c.Clientset.CoreV1()
	if _, err := cs.ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"color": "blue"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{"password": []byte("hunter2")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	vol := func(name string, src corev1.VolumeSource) corev1.Volume {
		return corev1.Volume{Name: name, VolumeSource: src}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "volumes", Namespace: ns, Labels: map[string]string{"app": "volumes"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "c", Image: agnhost, Args: []string{"pause"},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "settings", MountPath: mountDir + "/settings", ReadOnly: true},
					{Name: "creds", MountPath: mountDir + "/creds", ReadOnly: true},
					{Name: "labels", MountPath: mountDir + "/labels"},
					{Name: "scratch", MountPath: mountDir + "/scratch"},
					{Name: "host", MountPath: mountDir + "/host"},
				},
			}},
			Volumes: []corev1.Volume{
				vol("settings", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}),
				vol("creds", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds", Items: []corev1.KeyToPath{{Key: "password", Path: "pw", Mode: ptr.To(int32(0o400))}}}}),
				vol("labels", corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{{Path: "app", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}}}}),
				vol("scratch", corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}),
				vol("host", corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostDir}}),
			},
		},
	}
	if err := createWhenServiceAccountExists(ctx, c, pod); err != nil {
		t.Fatal(err)
	}
	return pod.Name, mountDir
}

// checkVolumesPod reads every volume from inside the pod: the files and
// modes written, read-only mounts refusing writes, the emptyDir writable,
// and the host not seeing the pod's mounts (the mount path on the host
// stays empty).
func checkVolumesPod(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name, mountDir string) {
	t.Helper()
	waitPodsRunning(ctx, t, c, ns, name)
	out, _, err := c.Exec(ctx, ns, name, "c", "sh", "-c", `cd `+mountDir+`
cat settings/color; echo
cat creds/pw; echo; stat -c %a creds/pw
cat labels/app; echo
cat host/from-host; echo
echo x > scratch/y && cat scratch/y
touch settings/new 2>&1 | sed 's/.*: //'`)
	if err != nil {
		t.Fatal(err)
	}
	want := "blue\nhunter2\n400\nvolumes\nhost\nx\nRead-only file system\n"
	if out != want {
		t.Errorf("volumes seen in the pod:\n%s\nwant:\n%s", out, want)
	}
	if entries, err := os.ReadDir(mountDir + "/settings"); err != nil || len(entries) != 0 {
		t.Errorf("the host sees %v at the pod's mount path (%v)", entries, err)
	}
}
