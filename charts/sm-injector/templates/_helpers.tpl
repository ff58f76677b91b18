{{/* Labels on every object, as manifests/ sets them, plus Helm's own. */}}
{{- define "sm-injector.labels" -}}
app.kubernetes.io/name: sm-injector
app.kubernetes.io/part-of: sm-injector
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The user the admission policy lets manage backing Secrets. */}}
{{- define "sm-injector.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:sm-injector
{{- end -}}
