{{/*
Named templates of the metering-sidecar chart.

Public (for a seller's own chart that depends on this one; see docs/deploy-eks.md):
  metering-sidecar.container          the sidecar as one initContainers list item (native sidecar)
  metering-sidecar.volumes            its pod volumes, as list items (socket, state, public key, handoff)
  metering-sidecar.appVolumeMounts    what each app container mounts (the socket directory), as list items
  metering-sidecar.appEnv             what each app container gets in env (METERING_SOCKET), as list items
  metering-sidecar.serviceAccountName the ServiceAccount carrying the IRSA role
  metering-sidecar.terminationGracePeriodSeconds  a grace period long enough for the sidecar's final flush
  metering-sidecar.podSecurityContext the restricted pod securityContext (as a mapping)

Each takes either this chart's root context or the root context of a parent chart that has this chart as a
dependency named "metering-sidecar": `{{ include "metering-sidecar.container" . }}`. In the parent, the values
are then this chart's values under the "metering-sidecar" key, with this chart's defaults. (With an alias, pass
the scope yourself: `{{ include "metering-sidecar.container" (index .Subcharts "my-alias") }}`.)
*/}}

{{/*
The scope whose .Values, .Chart and .Release belong to this chart: the subchart scope when called from a parent
chart, else the context itself. Internal: every public template starts with
  {{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end }}
because Go templates cannot return objects.
*/}}

{{- define "metering-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-metering-sidecar, or the release name alone when it already contains the chart name. */}}
{{- define "metering-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "metering-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "metering-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metering-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "metering-sidecar.labels" -}}
helm.sh/chart: {{ include "metering-sidecar.chart" . }}
{{ include "metering-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: Helm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "metering-sidecar.serviceAccountName" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
{{- if $s.Values.serviceAccount.create }}
{{- default (include "metering-sidecar.fullname" $s) $s.Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: an existing ServiceAccount annotated with eks.amazonaws.com/role-arn" $s.Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the product public key, or "" when none is configured. */}}
{{- define "metering-sidecar.publicKeySecretName" -}}
{{- with .Values.sidecar.publicKey }}
{{- if and .existingSecret .pem }}
{{- fail "sidecar.publicKey: set either existingSecret or pem, not both" }}
{{- else if .existingSecret }}
{{- .existingSecret }}
{{- else if .pem }}
{{- printf "%s-public-key" (include "metering-sidecar.fullname" $) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret key holding the PEM: the configured key for an existing Secret, product-key.pem for inline PEM. */}}
{{- define "metering-sidecar.publicKeySecretKey" -}}
{{- if .Values.sidecar.publicKey.existingSecret }}
{{- required "sidecar.publicKey.key is required with sidecar.publicKey.existingSecret" .Values.sidecar.publicKey.key }}
{{- else }}
{{- print "product-key.pem" }}
{{- end }}
{{- end }}

{{/* Fixed paths inside the sidecar image and the pod (the image's defaults; docs/configuration.md). */}}
{{- define "metering-sidecar.socketDir" -}}/run/metering{{- end }}
{{- define "metering-sidecar.socketPath" -}}/run/metering/metering.sock{{- end }}
{{- define "metering-sidecar.stateDir" -}}/var/lib/metering{{- end }}
{{- define "metering-sidecar.publicKeyDir" -}}/etc/metering/public-key{{- end }}
{{- define "metering-sidecar.publicKeyPath" -}}/etc/metering/public-key/product-key.pem{{- end }}

{{/* Volume names; prefixed so they do not clash with the app's own volumes in a seller's pod. */}}
{{- define "metering-sidecar.socketVolume" -}}metering-socket{{- end }}
{{- define "metering-sidecar.stateVolume" -}}metering-state{{- end }}
{{- define "metering-sidecar.publicKeyVolume" -}}metering-public-key{{- end }}
{{- define "metering-sidecar.handoffVolume" -}}metering-handoff{{- end }}
{{- define "metering-sidecar.handoffDir" -}}/var/lib/metering-handoff{{- end }}

{{- define "metering-sidecar.image" -}}
{{- with .Values.sidecar.image }}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Startup probe failureThreshold: enough periods to cover METERING_ENTITLEMENT_RETRY_SECONDS plus a minute, because
the sidecar retries throttling and network errors of RegisterUsage for that long before it is ready or exits.
*/}}
{{- define "metering-sidecar.startupFailureThreshold" -}}
{{- $probe := .Values.sidecar.startupProbe }}
{{- if $probe.failureThreshold }}
{{- $probe.failureThreshold | int }}
{{- else }}
{{- $period := $probe.periodSeconds | int }}
{{- $budget := add (.Values.sidecar.entitlementRetrySeconds | int) 60 }}
{{- div (add $budget $period -1) $period }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the explicit value, or the sidecar's shutdown timeout plus a margin for the app's
own shutdown (a native sidecar is stopped only after the app containers have exited, within the same grace period).
*/}}
{{- define "metering-sidecar.terminationGracePeriodSeconds" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
{{- $shutdown := $s.Values.sidecar.shutdownTimeoutSeconds | int }}
{{- $explicit := $s.Values.pod.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $explicit }}
{{- add $shutdown ($s.Values.pod.terminationGraceMarginSeconds | int) }}
{{- else if le ($explicit | int) $shutdown }}
{{- fail (printf "pod.terminationGracePeriodSeconds (%d) must be longer than sidecar.shutdownTimeoutSeconds (%d), or the sidecar is killed before its final send" ($explicit | int) $shutdown) }}
{{- else }}
{{- $explicit | int }}
{{- end }}
{{- end }}

{{/* Checks that cannot be expressed in values.schema.json, with messages that say what to do. */}}
{{- define "metering-sidecar.validate" -}}
{{- $v := .Values }}
{{- $_ := required "sidecar.productCode is required: the product code from the AWS Marketplace Management Portal" $v.sidecar.productCode }}
{{- if and (ne $v.sidecar.entitlement "none") $v.serviceAccount.create }}
{{- $_ := required (printf "serviceAccount.roleArn is required with sidecar.entitlement=%s: the IAM role for IRSA with aws-marketplace:RegisterUsage and aws-marketplace:MeterUsage (AWS Marketplace metering accepts only IRSA on EKS, not EKS Pod Identity, node roles or static keys)" $v.sidecar.entitlement) $v.serviceAccount.roleArn }}
{{- end }}
{{- if and (ne (toString $v.sidecar.listen) "off") (eq (regexFind "[0-9]+$" (toString $v.sidecar.listen)) (toString ($v.sidecar.adminPort | int))) }}
{{- fail "sidecar.adminPort must differ from the port of sidecar.listen (the app API)" }}
{{- end }}
{{- $_ := required "sidecar.dimensions is required: the product's dimension names, as listed in the AWS Marketplace Management Portal (usage for any other name is refused at intake)" (join "," $v.sidecar.dimensions) }}
{{- end }}

{{/*
The sidecar as one `initContainers` list item. restartPolicy: Always makes it a native sidecar (Kubernetes >= 1.29):
it starts before the app containers, which start only once its startup probe (/readyz: entitled, ledger writable,
intake listening) has passed, and it is stopped only after they have exited, so its SIGTERM flush sees all usage.
Usage from a parent chart:
  initContainers:
    {{- include "metering-sidecar.container" . | nindent 8 }}
*/}}
{{- define "metering-sidecar.container" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
{{- include "metering-sidecar.validate" $s }}
{{- $v := $s.Values.sidecar }}
{{- $keySecret := include "metering-sidecar.publicKeySecretName" $s -}}
- name: metering-sidecar
  image: {{ include "metering-sidecar.image" $s | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  restartPolicy: Always
  args: ["run"]
  env:
    - name: METERING_PRODUCT_CODE
      value: {{ $v.productCode | quote }}
    - name: METERING_ENTITLEMENT
      value: {{ $v.entitlement | quote }}
    - name: METERING_PUBLIC_KEY_VERSION
      value: {{ $v.publicKeyVersion | int | quote }}
    {{- if $keySecret }}
    - name: METERING_PUBLIC_KEY_FILE
      value: {{ include "metering-sidecar.publicKeyPath" $s | quote }}
    {{- end }}
    - name: METERING_ENTITLEMENT_RETRY_SECONDS
      value: {{ $v.entitlementRetrySeconds | int | quote }}
    {{- with $v.dimensions }}
    - name: METERING_DIMENSIONS
      value: {{ join "," . | quote }}
    {{- end }}
    {{- with $v.unitDivisors }}
    {{- $pairs := list }}
    {{- range $dimension, $divisor := . }}
    {{- $pairs = append $pairs (printf "%s=%d" $dimension ($divisor | int64)) }}
    {{- end }}
    - name: METERING_UNIT_DIVISORS
      value: {{ join "," $pairs | quote }}
    {{- end }}
    - name: METERING_SOCKET
      value: {{ include "metering-sidecar.socketPath" $s | quote }}
    - name: METERING_LISTEN
      value: {{ $v.listen | quote }}
    - name: METERING_ADMIN_LISTEN
      value: {{ printf "0.0.0.0:%d" ($v.adminPort | int) | quote }}
    - name: METERING_STATE_DIR
      value: {{ include "metering-sidecar.stateDir" $s | quote }}
    {{- with $v.schedule }}
    - name: METERING_SCHEDULE
      value: {{ . | quote }}
    {{- end }}
    - name: METERING_SEND_JITTER_SECONDS
      value: {{ $v.sendJitterSeconds | int | quote }}
    - name: METERING_SHUTDOWN_TIMEOUT_SECONDS
      value: {{ $v.shutdownTimeoutSeconds | int | quote }}
    - name: METERING_IDEMPOTENCY_KEYS_MAX
      value: {{ $v.idempotencyKeysMax | int | quote }}
    - name: METERING_RETENTION_DAYS
      value: {{ $v.retentionDays | int | quote }}
    # The pod's identity, stored with every record it seals for the reconciliation export.
    - name: METERING_POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: METERING_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: METERING_POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    - name: METERING_LOG_LEVEL
      value: {{ $v.logLevel | quote }}
    - name: METERING_DRY_RUN
      value: {{ $v.dryRun | toString | quote }}
    - name: METERING_ZERO_USAGE
      value: {{ $v.zeroUsage | toString | quote }}
    {{- if $s.Values.handoff.existingClaim }}
    - name: METERING_HANDOFF_DIR
      value: {{ include "metering-sidecar.handoffDir" $s | quote }}
    - name: METERING_HANDOFF_SCAN_SECONDS
      value: {{ $s.Values.handoff.scanSeconds | int | quote }}
    {{- end }}
    {{- with $v.region }}
    - name: AWS_REGION
      value: {{ . | quote }}
    {{- end }}
  ports:
    - name: metering-admin
      containerPort: {{ $v.adminPort | int }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: metering-admin
    periodSeconds: {{ $v.startupProbe.periodSeconds | int }}
    timeoutSeconds: 3
    failureThreshold: {{ include "metering-sidecar.startupFailureThreshold" $s }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: metering-admin
    periodSeconds: {{ $v.readinessProbe.periodSeconds | int }}
    timeoutSeconds: 3
    failureThreshold: {{ $v.readinessProbe.failureThreshold | int }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: metering-admin
    periodSeconds: {{ $v.livenessProbe.periodSeconds | int }}
    timeoutSeconds: 3
    failureThreshold: {{ $v.livenessProbe.failureThreshold | int }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: {{ include "metering-sidecar.socketVolume" $s }}
      mountPath: {{ include "metering-sidecar.socketDir" $s }}
    - name: {{ include "metering-sidecar.stateVolume" $s }}
      mountPath: {{ include "metering-sidecar.stateDir" $s }}
    {{- if $keySecret }}
    - name: {{ include "metering-sidecar.publicKeyVolume" $s }}
      mountPath: {{ include "metering-sidecar.publicKeyDir" $s }}
      readOnly: true
    {{- end }}
    {{- with $s.Values.handoff }}
    {{- if .existingClaim }}
    - name: {{ include "metering-sidecar.handoffVolume" $s }}
      mountPath: {{ include "metering-sidecar.handoffDir" $s }}
      {{- with .subPath }}
      subPath: {{ . | quote }}
      {{- end }}
    {{- end }}
    {{- end }}
{{- end }}

{{/* The sidecar's pod volumes, as `volumes` list items. */}}
{{- define "metering-sidecar.volumes" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
{{- $keySecret := include "metering-sidecar.publicKeySecretName" $s -}}
- name: {{ include "metering-sidecar.socketVolume" $s }}
  emptyDir:
    {{- with $s.Values.volumes.socket.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ $s.Values.volumes.socket.sizeLimit | quote }}
- name: {{ include "metering-sidecar.stateVolume" $s }}
  emptyDir:
    {{- with $s.Values.volumes.state.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ $s.Values.volumes.state.sizeLimit | quote }}
{{- if $keySecret }}
- name: {{ include "metering-sidecar.publicKeyVolume" $s }}
  secret:
    secretName: {{ $keySecret }}
    defaultMode: 0444
    items:
      - key: {{ include "metering-sidecar.publicKeySecretKey" $s | quote }}
        path: product-key.pem
{{- end }}
{{- with $s.Values.handoff.existingClaim }}
- name: {{ include "metering-sidecar.handoffVolume" $s }}
  persistentVolumeClaim:
    claimName: {{ . | quote }}
{{- end }}
{{- end }}

{{/* What each app container mounts to reach the sidecar, as `volumeMounts` list items. */}}
{{- define "metering-sidecar.appVolumeMounts" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
- name: {{ include "metering-sidecar.socketVolume" $s }}
  mountPath: {{ include "metering-sidecar.socketDir" $s }}
{{- end }}

{{/* What each app container gets in `env` to find the sidecar, as list items. */}}
{{- define "metering-sidecar.appEnv" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
- name: METERING_SOCKET
  value: {{ include "metering-sidecar.socketPath" $s | quote }}
{{- end }}

{{/* The restricted pod securityContext (a mapping). */}}
{{- define "metering-sidecar.podSecurityContext" -}}
{{- $s := . }}{{ if and .Subcharts (hasKey .Subcharts "metering-sidecar") }}{{ $s = index .Subcharts "metering-sidecar" }}{{ end -}}
{{- toYaml $s.Values.pod.securityContext }}
{{- end }}
