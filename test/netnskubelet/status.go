package netnskubelet

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// writeStatus computes the pod's status from what runs and writes it
// through the status subresource when it changed. Every time in it is
// whole seconds, as the API stores them, so an unchanged pod compares
// equal and causes no write.
func (k *Kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	status := k.podStatus(pod, rt)
	if apiequality.Semantic.DeepEqual(status, pod.Status) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = status
	if _, err := k.cfg.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // deleted meanwhile: the delete event follows
		}
		return fmt.Errorf("writing the status of pod %s: %w", rt.key, err)
	}
	k.log.V(1).Info("pod status written", "pod", rt.key, "phase", status.Phase, "ready", podReady(status))
	return nil
}

func (k *Kubelet) podStatus(pod *corev1.Pod, rt *podRuntime) corev1.PodStatus {
	s := *pod.Status.DeepCopy()
	s.ObservedGeneration = pod.Generation
	s.HostIP = k.cfg.NodeIPs[0].String()
	s.HostIPs = nil
	for _, a := range k.cfg.NodeIPs {
		s.HostIPs = append(s.HostIPs, corev1.HostIP{IP: a.String()})
	}
	s.PodIP, s.PodIPs = "", nil
	for _, a := range rt.ips {
		if s.PodIP == "" {
			s.PodIP = a.String()
		}
		s.PodIPs = append(s.PodIPs, corev1.PodIP{IP: a.String()})
	}
	if s.StartTime == nil {
		s.StartTime = &rt.startTime
	}

	rt.mu.Lock()
	initsDone, initsFailed := rt.initsDone, rt.initsFailed
	rt.mu.Unlock()
	s.InitContainerStatuses = nil
	for _, c := range rt.inits {
		cs := c.status()
		if cs.State.Terminated != nil || initsDone {
			cs.Ready = cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
		}
		s.InitContainerStatuses = append(s.InitContainerStatuses, cs)
	}
	s.ContainerStatuses = nil
	allReady := initsDone
	var running, succeeded, failed int
	for _, c := range rt.apps {
		cs := c.status()
		if !initsDone {
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}
		}
		allReady = allReady && cs.Ready
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0:
			succeeded++
		case cs.State.Terminated != nil:
			failed++
		case cs.LastTerminationState.Terminated != nil:
			running++ // between restarts: still a running pod
		}
		s.ContainerStatuses = append(s.ContainerStatuses, cs)
	}

	switch {
	case initsFailed:
		s.Phase = corev1.PodFailed
	case !initsDone:
		s.Phase = corev1.PodPending
	case succeeded+failed == len(rt.apps) && failed == 0:
		s.Phase = corev1.PodSucceeded
	case succeeded+failed == len(rt.apps):
		s.Phase = corev1.PodFailed
	case running > 0 || succeeded+failed > 0:
		s.Phase = corev1.PodRunning
	default:
		s.Phase = corev1.PodPending
	}

	for _, gate := range pod.Spec.ReadinessGates {
		ok := false
		for _, c := range pod.Status.Conditions {
			ok = ok || c.Type == gate.ConditionType && c.Status == corev1.ConditionTrue
		}
		allReady = allReady && ok
	}
	sandboxReady := !rt.isReleased()
	setCondition(&s, pod.Generation, corev1.PodReadyToStartContainers, sandboxReady)
	setCondition(&s, pod.Generation, corev1.PodInitialized, initsDone)
	setCondition(&s, pod.Generation, corev1.ContainersReady, allReady)
	setCondition(&s, pod.Generation, corev1.PodReady, allReady)
	return s
}

func (rt *podRuntime) isReleased() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.released
}

// setCondition sets a condition the kubelet owns, keeping its transition
// time while its status stays the same.
func setCondition(s *corev1.PodStatus, generation int64, t corev1.PodConditionType, ok bool) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	for i := range s.Conditions {
		c := &s.Conditions[i]
		if c.Type != t {
			continue
		}
		if c.Status != status {
			c.Status = status
			c.LastTransitionTime = metav1.Now().Rfc3339Copy()
		}
		c.ObservedGeneration = generation
		return
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{
		Type: t, Status: status, ObservedGeneration: generation,
		LastTransitionTime: metav1.Now().Rfc3339Copy(),
	})
}

func podReady(s corev1.PodStatus) bool {
	for _, c := range s.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
