{{/* Labels on every object. */}}
{{- define "weir.labels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The image of every component. */}}
{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The control plane's address, as node proxies and gateways dial it. */}}
{{- define "weir.controlAddress" -}}
{{ .Release.Name }}-control.{{ .Release.Namespace }}.svc:{{ .Values.control.port }}
{{- end }}

{{/* Mesh flags shared by every component. */}}
{{- define "weir.meshArgs" -}}
- --trust-domain={{ .Values.mesh.trustDomain }}
- --root-namespace={{ .Values.mesh.rootNamespace }}
{{- end }}
