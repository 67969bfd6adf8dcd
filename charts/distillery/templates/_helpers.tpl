{{/* Full name of the release's objects: the release name, with "distillery" appended unless it is already in it. */}}
{{- define "distillery.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "distillery.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distillery
{{- end -}}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: distillery-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The ClusterRole bound to each worker ServiceAccount the operator creates. */}}
{{- define "distillery.workerClusterRole" -}}
{{- printf "%s-worker" (include "distillery.fullname" .) -}}
{{- end -}}

{{- define "distillery.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}
