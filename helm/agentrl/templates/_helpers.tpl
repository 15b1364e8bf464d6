{{/* Names: "<release>-agentrl", or the release name when it already says agentrl. */}}
{{- define "agentrl.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentrl.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: agentrl
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector of one component; call with (dict "root" $ "component" "sandbox"). */}}
{{- define "agentrl.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "agentrl.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "agentrl.sharedClaim" -}}
{{- .Values.sharedVolume.existingClaim | default (printf "%s-shared" (include "agentrl.fullname" .)) -}}
{{- end -}}

{{- define "agentrl.redisUrl" -}}
{{- if .Values.redis.external -}}
{{- .Values.redis.url -}}
{{- else -}}
{{- printf "redis://%s-redis:6379/0" (include "agentrl.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The recipe every service reads: service addresses, Redis and paths on the shared volume,
computed from the values, with .Values.recipe merged over them.
*/}}
{{- define "agentrl.recipe" -}}
{{- $fullname := include "agentrl.fullname" . -}}
{{- $mount := .Values.sharedVolume.mountPath -}}
{{- $recipe := dict "run" (dict "run_id" .Release.Name "output_dir" (printf "%s/runs/%s" $mount .Release.Name)) -}}
{{- if not (and .Values.redis.external .Values.redis.existingSecret) -}}
{{- $_ := set $recipe "redis" (dict "url" (include "agentrl.redisUrl" .)) -}}
{{- end -}}
{{- range $name, $svc := .Values.services -}}
{{- if $svc.enabled -}}
{{- $_ := set $recipe $name (dict "address" (printf "%s-%s:%v" $fullname $name $svc.grpcPort)) -}}
{{- end -}}
{{- end -}}
{{- if .Values.services.search.enabled -}}
{{- $_ := set $recipe.search "index_dir" (printf "%s/search-index" $mount) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $recipe (deepCopy .Values.recipe)) -}}
{{- end -}}
