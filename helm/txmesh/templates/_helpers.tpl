{{/* The prefix of every object: fullnameOverride, else the release name. */}}
{{- define "txmesh.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "txmesh.labels" -}}
app.kubernetes.io/name: txmesh
app.kubernetes.io/instance: {{ include "txmesh.fullname" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "ingress"). */}}
{{- define "txmesh.selector" -}}
app.kubernetes.io/name: txmesh
app.kubernetes.io/instance: {{ include "txmesh.fullname" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "txmesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "txmesh.secretName" -}}
{{ include "txmesh.fullname" .root }}-{{ .identity }}-tls
{{- end -}}

{{/* DNS name of a component's client Service. */}}
{{- define "txmesh.serviceHost" -}}
{{ include "txmesh.fullname" .root }}-{{ .component }}.{{ .root.Release.Namespace }}.svc.{{ .root.Values.clusterDomain }}
{{- end -}}

{{/*
One identity's directory: tls.crt and tls.key from its Secret, ca.crt from
the Secret or from the trust-bundle ConfigMap. A projected volume is
updated in place when cert-manager renews the Secret; the services reload
the files (tls.reload_interval_ms) without a restart.
*/}}
{{- define "txmesh.identityVolume" -}}
- name: identity-{{ .identity }}
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ include "txmesh.secretName" . }}
          items:
            - { key: tls.crt, path: tls.crt }
            - { key: tls.key, path: tls.key }
            {{- if not .root.Values.certificates.trustBundle.configMap }}
            - { key: ca.crt, path: ca.crt }
            {{- end }}
      {{- with .root.Values.certificates.trustBundle.configMap }}
      - configMap:
          name: {{ . }}
          items:
            - { key: {{ $.root.Values.certificates.trustBundle.key }}, path: ca.crt }
      {{- end }}
{{- end -}}

{{- define "txmesh.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "txmesh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* An exec probe: `txmesh health` over mTLS with the pod's own identity. */}}
{{- define "txmesh.healthProbe" -}}
exec:
  command:
    - /usr/local/bin/txmesh
    - --config=/etc/txmesh/txmesh.toml
    - health
    - --target=127.0.0.1:{{ .port }}
    - --server={{ .server }}
    - --timeout=3s
{{- end -}}

{{/*
A server's three probes, all `txmesh health` (NOT_SERVING fails them).
Startup allows journal recovery startupFailures x 5 s; liveness restarts
only after livenessFailures x 10 s, since a full disk heals by itself.
*/}}
{{- define "txmesh.probes" -}}
startupProbe:
  {{- include "txmesh.healthProbe" . | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ .startupFailures }}
readinessProbe:
  {{- include "txmesh.healthProbe" . | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
livenessProbe:
  {{- include "txmesh.healthProbe" . | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: {{ .livenessFailures }}
{{- end -}}

{{- define "txmesh.spread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: DoNotSchedule
    labelSelector:
      matchLabels:
        {{- include "txmesh.selector" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "txmesh.selector" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/*
The ingress replica set: the StatefulSet's pod names, comma-separated, in
ordinal order (cluster.replicas).
*/}}
{{/* The replica set the replicas route by: ingress.members (pod names or
ordinals), or every pod; each must be a pod of the StatefulSet. */}}
{{- define "txmesh.ingressMembers" -}}
{{- $full := include "txmesh.fullname" . -}}
{{- $pods := splitList "," (include "txmesh.ingressReplicas" .) -}}
{{- $names := list -}}
{{- range $m := (.Values.ingress.members | default list) -}}
{{- $name := toString $m -}}
{{- if regexMatch "^[0-9]+$" $name -}}
{{- $name = printf "%s-ingress-%s" $full $name -}}
{{- end -}}
{{- if not (has $name $pods) -}}
{{- fail (printf "ingress.members: %s is not a pod of the ingress StatefulSet (%s)" $name (join ", " $pods)) -}}
{{- end -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- if not $names -}}
{{- $names = $pods -}}
{{- end -}}
{{- join "\n" $names -}}
{{- end -}}

{{- define "txmesh.ingressReplicas" -}}
{{- $full := include "txmesh.fullname" . -}}
{{- $names := list -}}
{{- range $i := until (int .Values.ingress.replicas) -}}
{{- $names = append $names (printf "%s-ingress-%d" $full $i) -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}
