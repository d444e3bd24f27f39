{{/*
Names, labels and the few values several templates derive. Templates include these and never
spell a name or label out themselves.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "cache-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: "<release>-<chart>", or just the release name when it already
contains the chart name. 63 characters at most (DNS label), no trailing "-".
*/}}
{{- define "cache-injector.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "cache-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: only name, instance and component, because a Deployment's selector cannot
change after install.
*/}}
{{- define "cache-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cache-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* Labels of every object the chart creates, but for the component. */}}
{{- define "cache-injector.commonLabels" -}}
helm.sh/chart: {{ include "cache-injector.chart" . }}
app.kubernetes.io/name: {{ include "cache-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cache-injector
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the webhook's objects. */}}
{{- define "cache-injector.labels" -}}
{{ include "cache-injector.commonLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* The ServiceAccount the webhook pods run as. */}}
{{- define "cache-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cache-injector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The webhook image reference; a digest wins over the tag. */}}
{{- define "cache-injector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Name of the Service, which the API server calls and the certificate is issued for. */}}
{{- define "cache-injector.serviceName" -}}
{{- include "cache-injector.fullname" . }}
{{- end }}

{{/*
The DNS names the serving certificate covers: every way a client in the cluster may name the
Service. The API server uses <service>.<namespace>.svc.
*/}}
{{- define "cache-injector.dnsNames" -}}
{{- $service := include "cache-injector.serviceName" . }}
{{- $namespace := .Release.Namespace }}
- {{ $service }}
- {{ printf "%s.%s" $service $namespace }}
- {{ printf "%s.%s.svc" $service $namespace }}
- {{ printf "%s.%s.svc.%s" $service $namespace .Values.policy.clusterDomain }}
{{- end }}

{{/* The Secret holding tls.crt and tls.key, mounted into the webhook pods. */}}
{{- define "cache-injector.tlsSecretName" -}}
{{- if eq .Values.certs.mode "existing" }}
{{- required "certs.existing.secretName is required with certs.mode=existing" .Values.certs.existing.secretName }}
{{- else }}
{{- printf "%s-tls" (include "cache-injector.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Where clients inside the cluster (the helm test Pod, Prometheus) find the CA that signed the
serving certificate, as a volume source: the TLS Secret's ca.crt in modes helm and
cert-manager, a ConfigMap made from certs.existing.caBundle in mode existing.
*/}}
{{- define "cache-injector.caVolumeSource" -}}
{{- if eq .Values.certs.mode "existing" }}
configMap:
  name: {{ include "cache-injector.fullname" . }}-ca
  items:
    - key: ca.crt
      path: ca.crt
{{- else }}
secret:
  secretName: {{ include "cache-injector.tlsSecretName" . }}
  items:
    - key: ca.crt
      path: ca.crt
{{- end }}
{{- end }}

{{/*
The policy as the server reads it: the `policy` values with the release namespace added to
excludeNamespaces (never removed, whatever the values say), without stickySessionSecret.
*/}}
{{- define "cache-injector.policy" -}}
{{- $policy := deepCopy .Values.policy }}
{{- $excluded := concat (default (list) $policy.excludeNamespaces) (list .Release.Namespace) | uniq }}
{{- $_ := set $policy "excludeNamespaces" $excluded }}
{{- /* The sticky-session secret lives in its own Secret (deployment.yaml), never here. */}}
{{- $_ := unset $policy "stickySessionSecret" }}
{{- toYaml $policy }}
{{- end }}

{{/*
Namespaces the webhook is never called for: the system ones, the release namespace (no
self-deadlock while the webhook's own pods start) and the policy's excludeNamespaces.
*/}}
{{- define "cache-injector.excludedNamespaces" -}}
{{- $system := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace }}
{{- toJson (concat $system (default (list) .Values.policy.excludeNamespaces) | uniq) }}
{{- end }}
