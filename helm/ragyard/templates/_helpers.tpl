{{/* Names and labels. */}}
{{- define "ragyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ragyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ragyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ragyard
{{- end -}}

{{- define "ragyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) -}}
{{- end -}}

{{- define "ragyard.gpuImage" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-gpu" .Chart.AppVersion) .Values.image.gpuTag) -}}
{{- end -}}

{{- define "ragyard.redisSecretName" -}}
{{- default (printf "%s-redis" (include "ragyard.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "ragyard.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "ragyard.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* Serve deployment name of a model id, as services/serve/app.py:deployment_name makes it. */}}
{{- define "ragyard.workerDeployment" -}}
{{- printf "worker-%s" (regexReplaceAll "[^A-Za-z0-9_-]" . "-") -}}
{{- end -}}

{{/* The SLA policy as the ConfigMap holds it: tenant keys in clear become sha256 digests. */}}
{{- define "ragyard.slaPolicy" -}}
{{- $policy := deepCopy .Values.sla.policy -}}
{{- range $name, $tenant := ($policy.tenants | default dict) -}}
{{- $keys := list -}}
{{- range $tenant.api_keys -}}
{{- $keys = append $keys (ternary . (printf "sha256:%s" (sha256sum .)) (hasPrefix "sha256:" .)) -}}
{{- end -}}
{{- $_ := set $tenant "api_keys" $keys -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}

{{/* Checks values.schema.json cannot express: references between parts of the SLA policy. */}}
{{- define "ragyard.validate" -}}
{{- $policy := .Values.sla.policy -}}
{{- $tiers := $policy.tiers | default dict -}}
{{- $default := $policy.default_tier | default "standard" -}}
{{- if not (hasKey $tiers $default) -}}
{{- fail (printf "sla.policy.default_tier: %q is not a tier (%s)" $default (keys $tiers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- range $name, $tier := $tiers -}}
{{- if and $tier.ttft_ms (gt (int $tier.ttft_ms) (int $tier.latency_ms)) -}}
{{- fail (printf "sla.policy.tiers.%s: ttft_ms must not exceed latency_ms" $name) -}}
{{- end -}}
{{- end -}}
{{- range $name, $tenant := ($policy.tenants | default dict) -}}
{{- range (prepend ($tenant.allowed_tiers | default list) $tenant.tier) -}}
{{- if not (hasKey $tiers .) -}}
{{- fail (printf "sla.policy.tenants.%s: tier %q does not exist (%s)" $name . (keys $tiers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.url) (not .Values.redis.existingSecret) -}}
{{- fail "redis: enable the chart's Redis, or give redis.url or redis.existingSecret (budgets and caches are shared through it)" -}}
{{- end -}}
{{- if and .Values.workerGroups.gpu.enabled (not .Values.workerGroups.cpu.enabled) (eq (index .Values.head.rayStartParams "num-cpus" | default "") "0") -}}
{{- fail "workerGroups: with the CPU group off, give the head CPUs (head.rayStartParams.num-cpus) for the gateway, router and retriever" -}}
{{- end -}}
{{- if and (not .Values.workerGroups.gpu.enabled) (not .Values.workerGroups.cpu.enabled) (eq (index .Values.head.rayStartParams "num-cpus" | default "") "0") -}}
{{- fail "workerGroups: no worker group is enabled and the head has num-cpus 0: nothing could run" -}}
{{- end -}}
{{- end -}}

{{/* The app config handed to build_app: the user's, with what the chart owns set over it. */}}
{{- define "ragyard.appConfig" -}}
{{- $cfg := deepCopy .Values.app.config -}}
{{- $sla := dict "enabled" .Values.sla.enabled "policy_path" "/etc/ragyard/sla/policy.yaml" "reload_interval_s" .Values.sla.reloadIntervalS -}}
{{- $_ := set $cfg "sla" (merge $sla (get $cfg "sla" | default dict)) -}}
{{- $_ := set $cfg "index" (merge (dict "dir" "/var/lib/ragyard/index" "lock_timeout_s" (int .Values.index.lockTimeoutSeconds)) (get $cfg "index" | default dict)) -}}
{{- $_ := set $cfg "cache_dir" "/home/ragyard/.cache/ragyard" -}}
{{- $server := merge (dict "host" "0.0.0.0" "port" (int .Values.service.port)) (get $cfg "server" | default dict) -}}
{{- $_ := set $cfg "server" $server -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Model ids of the app config (the default model when none is listed). */}}
{{- define "ragyard.modelIds" -}}
{{- $ids := list -}}
{{- range (.Values.app.config.models | default (list (dict "id" "smollm2-135m-instruct"))) -}}
{{- $ids = append $ids (.id | default "smollm2-135m-instruct") -}}
{{- end -}}
{{- toJson $ids -}}
{{- end -}}

{{/* The Ray Serve config (serveConfigV2): our import path, the app config as args, autoscaling. */}}
{{- define "ragyard.serveConfig" -}}
{{- $deployments := list -}}
{{- range $name := list "gateway" "router" "retriever" -}}
{{- $deployments = append $deployments (dict "name" $name "num_replicas" "auto" "autoscaling_config" (index $.Values.app.autoscaling $name)) -}}
{{- end -}}
{{- range $id := (include "ragyard.modelIds" . | fromJsonArray) -}}
{{- $scaling := index $.Values.app.workerAutoscaling $id | default $.Values.app.autoscaling.workers -}}
{{- $deployments = append $deployments (dict "name" (include "ragyard.workerDeployment" $id) "num_replicas" "auto" "autoscaling_config" $scaling) -}}
{{- end -}}
{{- $app := dict "name" "ragyard" "route_prefix" "/" "import_path" "services.serve.app:build_app" "args" (include "ragyard.appConfig" . | fromYaml) "deployments" $deployments -}}
{{- $config := dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" (int .Values.service.port)) "applications" (list $app) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Environment of every Ray container. */}}
{{- define "ragyard.env" -}}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
- name: TOKENIZERS_PARALLELISM
  value: "false"
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ragyard.redisSecretName" . }}
      key: redis-password
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "ragyard.fullname" .) | quote }}
{{- else }}
- name: REDIS_URL
  value: {{ printf "redis://%s-redis:6379/0" (include "ragyard.fullname" .) | quote }}
{{- end }}
{{- else if .Values.redis.existingSecret }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: redis-url
{{- else }}
- name: REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
# The corpus log (the documents' store of record) is the Redis of budgets and caches.
- name: RAGYARD_INDEX__LOG_URL
  value: "$(REDIS_URL)"
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}
- name: RAGYARD_SERVER__API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "ragyard.apiKeysSecretName" . }}
      key: api-keys
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragyard.volumes" -}}
- name: sla-policy
  configMap:
    name: {{ include "ragyard.fullname" . }}-sla
- name: index
{{- if .Values.index.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "ragyard.indexClaim" . }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.index.sizeLimit }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.sharedMemory }}
- name: ray-logs
  emptyDir: {}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragyard.volumeMounts" -}}
- name: sla-policy
  mountPath: /etc/ragyard/sla
  readOnly: true
- name: index
  mountPath: /var/lib/ragyard/index
- name: dshm
  mountPath: /dev/shm
- name: ray-logs
  mountPath: /tmp/ray
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Probes of the pods that serve HTTP through their Serve proxy. */}}
{{- define "ragyard.serveProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: serve}
  {{- toYaml .Values.probes.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: serve}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: serve}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
{{- end -}}


{{/* The index's claim: the user's existing one, or the chart's. */}}
{{- define "ragyard.indexClaim" -}}
{{- .Values.index.persistence.existingClaim | default (printf "%s-index" (include "ragyard.fullname" .)) -}}
{{- end -}}
