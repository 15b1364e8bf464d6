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

{{/* Image of the trainer and rollout worker (Dockerfile.loop) and of the vLLM pool (Dockerfile.vllm). */}}
{{- define "agentrl.loopImage" -}}
{{- printf "%s:%s" .Values.loopImage.repository (.Values.loopImage.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "agentrl.vllmImage" -}}
{{- printf "%s:%s" .Values.vllm.image.repository (.Values.vllm.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The engine settings of every vLLM replica (the recipe's inference.server): a replica with
several GPUs shards the model over them (tensor parallel); eager mode (no CUDA graphs) unless
set, on CPU only. */}}
{{- define "agentrl.vllmEngine" -}}
{{- $vllm := .Values.vllm -}}
{{- /* The launcher's own flags (LAUNCHER_MANAGED_FLAGS in libs/common/config.py). */ -}}
{{- $managed := list "--model" "--served-model-name" "--host" "--port" "--dtype" "--max-model-len" "--max-num-seqs" "--max-logprobs" "--logprobs-mode" "--generation-config" "--seed" "--tensor-parallel-size" "-tp" "--enforce-eager" "--gpu-memory-utilization" "--weight-transfer-config" -}}
{{- range $vllm.extraArgs -}}
{{- if has (splitList "=" . | first) $managed -}}
{{- fail (printf "vllm.extraArgs sets %s, which the chart sets itself: use vllm.gpus (tensor parallel), vllm.enforceEager, vllm.gpuMemoryUtilization, vllm.port or recipe.inference.server.* (dtype, max_model_len, max_num_seqs) instead" (splitList "=" . | first)) -}}
{{- end -}}
{{- end -}}
{{- $engine := dict "tensor_parallel_size" (max 1 (int $vllm.gpus)) "extra_args" $vllm.extraArgs -}}
{{- $_ := set $engine "enforce_eager" (ternary (eq (int $vllm.gpus) 0) $vllm.enforceEager (kindIs "invalid" $vllm.enforceEager)) -}}
{{- if not (kindIs "invalid" $vllm.gpuMemoryUtilization) -}}
{{- $_ := set $engine "gpu_memory_utilization" $vllm.gpuMemoryUtilization -}}
{{- end -}}
{{- toYaml $engine -}}
{{- end -}}

{{/* Each vLLM replica's own URL through the headless Service (pod.service resolves in the
namespace): pause, weight updates and version changes go to every replica. */}}
{{- define "agentrl.vllmUrls" -}}
{{- $fullname := include "agentrl.fullname" . -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.vllm.replicas) -}}
{{- $urls = append $urls (printf "http://%s-vllm-%d.%s-vllm:%v" $fullname $i $fullname $.Values.vllm.port) -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}

{{/* The trainer's rank-0 pod (index 0 of the indexed Job) through its headless Service. */}}
{{- define "agentrl.trainerHost" -}}
{{- $fullname := include "agentrl.fullname" . -}}
{{- printf "%s-trainer-0.%s-trainer" $fullname $fullname -}}
{{- end -}}

{{/* Trainer processes in all: nodes x GPUs per node (one process per node on CPU). */}}
{{- define "agentrl.trainerWorld" -}}
{{- mul (int .Values.trainer.nodes) (max 1 (int .Values.trainer.gpusPerNode)) -}}
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
{{- if or .Values.vllm.enabled .Values.rollout.enabled .Values.trainer.enabled -}}
{{- $_ := set $recipe "model" (dict "path" (printf "%s/%s" $mount .Values.model.path)) -}}
{{- end -}}
{{- if .Values.vllm.enabled -}}
{{- $backend := ternary "agentrl_gloo" "none" (eq .Values.trainer.weightTransport "vllm") -}}
{{- $_ := set $recipe "inference" (dict "urls" (include "agentrl.vllmUrls" . | fromJsonArray) "weight_transfer_backend" $backend "server" (include "agentrl.vllmEngine" . | fromYaml)) -}}
{{- end -}}
{{- if .Values.rollout.enabled -}}
{{- $_ := set $recipe "rollout" (dict "address" (printf "%s-rollout:%v" $fullname .Values.rollout.grpcPort) "shutdown_grace_s" .Values.rollout.shutdownGraceSeconds) -}}
{{- end -}}
{{- if .Values.trainer.enabled -}}
{{- $data := dict "train_path" (printf "%s/%s" $mount .Values.data.trainPath) -}}
{{- with .Values.data.evalPath -}}
{{- $_ := set $data "eval_path" (printf "%s/%s" $mount .) -}}
{{- end -}}
{{- $_ := set $recipe "data" $data -}}
{{- $parallelism := ternary "fsdp2" "single" (gt (int (include "agentrl.trainerWorld" .)) 1) -}}
{{- $_ := set $recipe "trainer" (dict "address" (printf "%s:%v" (include "agentrl.trainerHost" .) .Values.trainer.grpcPort) "weight_transport" .Values.trainer.weightTransport "weight_transfer_address" (include "agentrl.trainerHost" .) "parallelism" $parallelism) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $recipe (deepCopy .Values.recipe)) -}}
{{- end -}}

{{/*
nodeSelector, tolerations and affinity of a pod; GPU pods add gpu.nodeSelector/tolerations.
Call with (dict "root" $ "gpus" N "spec" <values with nodeSelector/tolerations/affinity>).
*/}}
{{- define "agentrl.scheduling" -}}
{{- $nodeSelector := deepCopy (.spec.nodeSelector | default dict) -}}
{{- $tolerations := .spec.tolerations | default list -}}
{{- if gt (int .gpus) 0 -}}
{{- $nodeSelector = mustMergeOverwrite $nodeSelector (deepCopy .root.Values.gpu.nodeSelector) -}}
{{- $tolerations = concat $tolerations .root.Values.gpu.tolerations -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container resources with the GPU limit added: (dict "root" $ "gpus" N "resources" {...}). */}}
{{- define "agentrl.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpus) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- if $resources.requests -}}
{{- $_ := set $resources.requests .root.Values.gpu.resourceName (int .gpus) -}}
{{- end -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Pod-level security of the loop's pods: uid 10001, no service account token. */}}
{{- define "agentrl.podSecurity" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "agentrl.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{/* Env every loop container gets: the recipe, the token file, JSON logs, HOME on /tmp. */}}
{{- define "agentrl.commonEnv" -}}
- name: AGENTRL_RECIPE
  value: /etc/agentrl/recipe.yaml
- name: AGENTRL_AUTH_TOKEN_FILE
  value: /var/run/secrets/agentrl/token
- name: AGENTRL_LOG_JSON
  value: {{ .Values.logJson | quote }}
# The root filesystem is read-only: caches (Hugging Face, torch, triton, vLLM) go to /tmp.
- name: HOME
  value: /tmp
{{- if and .Values.redis.external .Values.redis.existingSecret }}
- name: AGENTRL__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* Volumes of a loop pod: (dict "root" $ "shared" "readOnly"|"readWrite" "shm" SIZE "tmp" SIZE). */}}
{{- define "agentrl.volumeMounts" -}}
- name: recipe
  mountPath: /etc/agentrl
  readOnly: true
- name: auth-token
  mountPath: /var/run/secrets/agentrl
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: shared
  mountPath: {{ .root.Values.sharedVolume.mountPath }}
  readOnly: {{ eq .shared "readOnly" }}
{{- if .shm }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- end -}}

{{- define "agentrl.volumes" -}}
{{- $fullname := include "agentrl.fullname" .root -}}
- name: recipe
  configMap:
    name: {{ $fullname }}-recipe
- name: auth-token
  secret:
    secretName: {{ .root.Values.auth.secretName }}
    items:
      - key: {{ .root.Values.auth.secretKey }}
        path: token
    defaultMode: 0440
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmp | default "10Gi" }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ include "agentrl.sharedClaim" .root }}
    readOnly: {{ eq .shared "readOnly" }}
{{- if .shm }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}
{{- end -}}

{{/* Labels of a GPU workload (the kustomize gpu overlay selects them by this label too). */}}
{{- define "agentrl.gpuLabel" -}}
{{- if gt (int .) 0 }}
agentrl.io/accelerator: nvidia-gpu
{{- end }}
{{- end -}}
