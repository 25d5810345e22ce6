/**
 * Offline validator for ECS task definitions in `aws ecs register-task-definition --cli-input-json` form, built
 * on the API model that ships in `@aws-sdk/client-ecs` (`RegisterTaskDefinitionRequest$`, walked with
 * `NormalizedSchema` from `@smithy/core`). It reports unknown fields (`essentail`), missing
 * required members, wrong primitive types and enum values outside the model's enums. It does not know the
 * documented numeric ranges (the model in the SDK carries none): tests assert those on the files themselves.
 *
 * The model does not say which field uses which enum, so {@link ENUM_FIELDS} maps them by
 * `Structure.member`. The required-member count is read from the SDK's schema array (`raw[6]`), an internal
 * layout: the SDK is pinned in package.json, and the tests check {@link requiredMembers} against known shapes
 * so a layout change fails loudly instead of silently requiring nothing.
 */
import * as ecs from '@aws-sdk/client-ecs';
import { NormalizedSchema } from '@smithy/core/schema';

type EnumObject = Readonly<Record<string, string>>;

/**
 * Enum of each string field, keyed `Structure.member` (the structure's name in the ECS model). A list of
 * enum values (`requiresCompatibilities`, `Device.permissions`) uses the key of the list member.
 */
export const ENUM_FIELDS: Readonly<Record<string, EnumObject>> = Object.freeze({
  'RegisterTaskDefinitionRequest.networkMode': ecs.NetworkMode,
  'RegisterTaskDefinitionRequest.requiresCompatibilities': ecs.Compatibility,
  'RegisterTaskDefinitionRequest.pidMode': ecs.PidMode,
  'RegisterTaskDefinitionRequest.ipcMode': ecs.IpcMode,
  'RuntimePlatform.cpuArchitecture': ecs.CPUArchitecture,
  'RuntimePlatform.operatingSystemFamily': ecs.OSFamily,
  'DockerVolumeConfiguration.scope': ecs.Scope,
  'EFSVolumeConfiguration.transitEncryption': ecs.EFSTransitEncryption,
  'EFSAuthorizationConfig.iam': ecs.EFSAuthorizationConfigIAM,
  'TaskDefinitionPlacementConstraint.type': ecs.TaskDefinitionPlacementConstraintType,
  'ProxyConfiguration.type': ecs.ProxyConfigurationType,
  'ContainerDefinition.versionConsistency': ecs.VersionConsistency,
  'LogConfiguration.logDriver': ecs.LogDriver,
  'PortMapping.protocol': ecs.TransportProtocol,
  'PortMapping.appProtocol': ecs.ApplicationProtocol,
  'ContainerDependency.condition': ecs.ContainerCondition,
  'EnvironmentFile.type': ecs.EnvironmentFileType,
  'FirelensConfiguration.type': ecs.FirelensConfigurationType,
  'ResourceRequirement.type': ecs.ResourceType,
  'Ulimit.name': ecs.UlimitName,
  'Device.permissions': ecs.DeviceCgroupPermission,
});

/** The schema of a whole `register-task-definition` input. */
export const REGISTER_TASK_DEFINITION_SCHEMA: NormalizedSchema = NormalizedSchema.of(
  ecs.RegisterTaskDefinitionRequest$,
);

/** Options of {@link validateTaskDefinition}. */
export interface ValidateOptions {
  /**
   * Replaces a value by the values it may take before it is checked (`[value]` by default). The CloudFormation
   * helper uses it to check both branches of `Fn::If`, drop `AWS::NoValue` and skip other intrinsics.
   */
  readonly expand?: (value: unknown) => readonly unknown[];
}

/**
 * Checks `value` against the ECS API model and returns one line per problem (`$.path: what`), or `[]` when
 * the document would pass the API's own shape validation. Never throws for bad input.
 */
export function validateTaskDefinition(
  value: unknown,
  options: ValidateOptions = {},
  schema: NormalizedSchema = REGISTER_TASK_DEFINITION_SCHEMA,
): string[] {
  const errors: string[] = [];
  const expand = options.expand ?? ((v: unknown) => [v]);
  const check = (v: unknown, s: NormalizedSchema, path: string, enumKey: string | undefined): void => {
    for (const alternative of expand(v)) checkOne(alternative, s, path, enumKey);
  };

  const checkOne = (v: unknown, s: NormalizedSchema, path: string, enumKey: string | undefined): void => {
    const got = kindOf(v);
    if (s.isStructSchema()) {
      if (got !== 'object') {
        errors.push(`${path}: expected object, got ${got}`);
        return;
      }
      const record = v as Record<string, unknown>;
      const members = s.getMemberSchemas();
      const structName = s.getName() ?? '?';
      for (const name of requiredMembers(s)) {
        if (!(name in record)) errors.push(`${path}: missing required '${name}'`);
      }
      for (const [key, member] of Object.entries(record)) {
        const memberSchema = members[key];
        if (memberSchema === undefined) errors.push(`${path}: unknown field '${key}'`);
        else check(member, memberSchema, `${path}.${key}`, `${structName}.${key}`);
      }
    } else if (s.isListSchema()) {
      if (got !== 'array') {
        errors.push(`${path}: expected array, got ${got}`);
        return;
      }
      (v as unknown[]).forEach((item, i) => check(item, s.getValueSchema(), `${path}[${i}]`, enumKey));
    } else if (s.isMapSchema()) {
      if (got !== 'object') {
        errors.push(`${path}: expected map, got ${got}`);
        return;
      }
      for (const [key, item] of Object.entries(v as Record<string, unknown>)) {
        check(item, s.getValueSchema(), `${path}.${key}`, undefined);
      }
    } else if (s.isStringSchema()) {
      if (got !== 'string') {
        errors.push(`${path}: expected string, got ${got}`);
        return;
      }
      const allowed = enumKey === undefined ? undefined : ENUM_FIELDS[enumKey];
      if (allowed !== undefined && !Object.values(allowed).includes(v as string)) {
        errors.push(`${path}: '${v as string}' not one of ${Object.values(allowed).join('|')}`);
      }
    } else if (s.isNumericSchema()) {
      // Every number in this input (ports, seconds, MiB, limits) is an Integer in the ECS model.
      if (!Number.isInteger(v)) errors.push(`${path}: expected integer, got ${got}`);
    } else if (s.isBooleanSchema()) {
      if (got !== 'boolean') errors.push(`${path}: expected boolean, got ${got}`);
    } else {
      errors.push(`${path}: schema kind not handled by the validator (${String(s.getName())})`);
    }
  };

  check(value, schema, '$', undefined);
  return errors;
}

/** Required member names of a structure schema (empty for other kinds). */
export function requiredMembers(schema: NormalizedSchema): readonly string[] {
  if (!schema.isStructSchema()) return [];
  // Static structure schema: [kind, namespace, name, traits, memberNames, memberSchemas, requiredCount?].
  const raw = schema.getSchema() as unknown as readonly unknown[];
  const names = raw[4];
  const count = raw[6];
  return Array.isArray(names) && typeof count === 'number' ? (names.slice(0, count) as string[]) : [];
}

/** The schema reached from the request by a member path such as `containerDefinitions.healthCheck`. */
export function schemaAt(path: string): NormalizedSchema {
  let schema = REGISTER_TASK_DEFINITION_SCHEMA;
  for (const name of path.split('.')) {
    while (schema.isListSchema() || schema.isMapSchema()) schema = schema.getValueSchema();
    const member = schema.isStructSchema() ? schema.getMemberSchemas()[name] : undefined;
    if (member === undefined) throw new Error(`no member '${name}' on the way to ${path}`);
    schema = member;
  }
  while (schema.isListSchema() || schema.isMapSchema()) schema = schema.getValueSchema();
  return schema;
}

/**
 * Renames the PascalCase properties of a CloudFormation `AWS::ECS::TaskDefinition` to the API's member names,
 * guided by the schema (matched case-insensitively, so `EFSVolumeConfiguration` becomes
 * `efsVolumeConfiguration`). Map keys (log options, labels) are left alone, unmatched keys are kept so the
 * validator reports them, and intrinsic functions are kept with `Fn::If` branches converted too.
 */
export function fromCloudFormation(
  value: unknown,
  schema: NormalizedSchema = REGISTER_TASK_DEFINITION_SCHEMA,
): unknown {
  if (isPlainObject(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'Fn::If' && Array.isArray(value['Fn::If'])) {
      const [condition, ...branches] = value['Fn::If'] as unknown[];
      return { 'Fn::If': [condition, ...branches.map((b) => fromCloudFormation(b, schema))] };
    }
    if (keys.length === 1 && (keys[0] === 'Ref' || keys[0].startsWith('Fn::'))) return value;
  }
  if (schema.isListSchema() && Array.isArray(value)) {
    return value.map((item) => fromCloudFormation(item, schema.getValueSchema()));
  }
  if (schema.isMapSchema() && isPlainObject(value)) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, fromCloudFormation(v, schema.getValueSchema())]),
    );
  }
  if (schema.isStructSchema() && isPlainObject(value)) {
    const members = schema.getMemberSchemas();
    const byLowerCase = new Map(Object.keys(members).map((name) => [name.toLowerCase(), name]));
    return Object.fromEntries(
      Object.entries(value).map(([key, v]) => {
        const name = byLowerCase.get(key.toLowerCase());
        return name === undefined ? [key, v] : [name, fromCloudFormation(v, members[name])];
      }),
    );
  }
  return value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return 'array';
  if (value === null) return 'null';
  return typeof value;
}
