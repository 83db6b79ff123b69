{{/* The image: image.repository and image.tag, the tag defaulting to v<appVersion>. */}}
{{- define "kubectl-hsd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" .Chart.AppVersion) }}
{{- end }}

{{/* Refuses values that `kubectl hsd install` would refuse. */}}
{{- define "kubectl-hsd.validate" -}}
{{- if not (has .Values.mode (list "cronjob" "deployment")) }}
{{- fail (printf "mode must be cronjob or deployment, not %q" .Values.mode) }}
{{- end }}
{{- if and (ne .Values.mode "deployment") (or .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled) }}
{{- fail "metrics.serviceMonitor and metrics.podMonitor need mode: deployment (the CronJob serves no metrics)" }}
{{- end }}
{{- end }}
