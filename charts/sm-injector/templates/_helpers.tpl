{{/* Labels on every object, as manifests/ sets them, plus Helm's own. */}}
{{- define "sm-injector.labels" -}}
app.kubernetes.io/name: sm-injector
app.kubernetes.io/part-of: sm-injector
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/*
What selects the replicas: this release's sm-injector pods and no one else's
(app.kubernetes.io/component alone is carried by other charts' webhooks too).
*/}}
{{- define "sm-injector.selectorLabels" -}}
app.kubernetes.io/name: sm-injector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image, by digest when one is given. */}}
{{- define "sm-injector.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The user the admission policy lets manage backing Secrets. */}}
{{- define "sm-injector.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:sm-injector
{{- end -}}
