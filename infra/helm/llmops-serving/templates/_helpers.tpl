{{/* Name prefix: the release name, or the chart name when the release is called like the chart. */}}
{{- define "llmops-serving.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* One model version's Deployment/Service name; call with (dict "root" $ "version" "3"). */}}
{{- define "llmops-serving.versionName" -}}
{{- printf "%s-v%s" (include "llmops-serving.fullname" .root) (toString .version) | lower | replace "." "-" -}}
{{- end -}}

{{- define "llmops-serving.labels" -}}
app.kubernetes.io/name: llmops-serving
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
