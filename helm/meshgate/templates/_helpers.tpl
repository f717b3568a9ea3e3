{{/* Name of the operator's objects. */}}
{{- define "meshgate.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "meshgate.labels" -}}
app.kubernetes.io/name: meshgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "meshgate.selector" -}}
app.kubernetes.io/name: meshgate-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
