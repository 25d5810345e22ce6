/**
 * Reads CloudFormation YAML templates and checks their references offline. {@link parseTemplate} turns the
 * intrinsic short forms (`!Ref`, `!Sub`, `!If`, ...) into their long JSON forms (`{ Ref: ... }`,
 * `{ 'Fn::If': [...] }`), and {@link checkReferences} reports every `Ref`, `Fn::GetAtt`, `Fn::Sub` variable and
 * condition name that points at nothing, the mistakes CloudFormation only finds at deploy time. It is not
 * cfn-lint: resource property names and types are checked elsewhere (ecsValidator.ts for the task definition).
 */
import { parseDocument, type CollectionTag, type ScalarTag, type YAMLMap, type YAMLSeq } from 'yaml';

/** A parsed template: the sections these checks read. */
export interface CfnTemplate {
  readonly AWSTemplateFormatVersion?: string;
  readonly Description?: string;
  readonly Metadata?: Record<string, unknown>;
  readonly Parameters?: Record<string, CfnParameter>;
  readonly Rules?: Record<string, unknown>;
  readonly Mappings?: Record<string, unknown>;
  readonly Conditions?: Record<string, unknown>;
  readonly Resources: Record<string, CfnResource>;
  readonly Outputs?: Record<string, CfnOutput>;
}

export interface CfnParameter {
  readonly Type: string;
  readonly Default?: string | number;
  readonly AllowedValues?: readonly (string | number)[];
  readonly AllowedPattern?: string;
  readonly Description?: string;
  readonly NoEcho?: boolean;
  readonly MinValue?: number;
  readonly MaxValue?: number;
}

export interface CfnResource {
  readonly Type: string;
  readonly Condition?: string;
  readonly DependsOn?: string | readonly string[];
  readonly Properties?: Record<string, unknown>;
  readonly DeletionPolicy?: string;
  readonly UpdateReplacePolicy?: string;
}

export interface CfnOutput {
  readonly Value: unknown;
  readonly Description?: string;
  readonly Condition?: string;
  readonly Export?: { readonly Name: unknown };
}

/** @see https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/pseudo-parameter-reference.html */
export const PSEUDO_PARAMETERS: readonly string[] = Object.freeze([
  'AWS::AccountId',
  'AWS::NotificationARNs',
  'AWS::NoValue',
  'AWS::Partition',
  'AWS::Region',
  'AWS::StackId',
  'AWS::StackName',
  'AWS::URLSuffix',
]);

/** Functions whose short form `!Name` stands for `{ 'Fn::Name': value }`, with a scalar, a list or a map. */
const FUNCTIONS = [
  'And',
  'Base64',
  'Cidr',
  'Equals',
  'FindInMap',
  'GetAZs',
  'If',
  'ImportValue',
  'Join',
  'Not',
  'Or',
  'Select',
  'Split',
  'Sub',
] as const;

/** Attributes that `Fn::GetAtt` may read, for the resource types the templates here use. */
const KNOWN_ATTRIBUTES: Readonly<Record<string, readonly string[]>> = {
  'AWS::IAM::Role': ['Arn', 'RoleId'],
  'AWS::Logs::LogGroup': ['Arn'],
  'AWS::ECS::TaskDefinition': ['TaskDefinitionArn'],
};

function toJs(node: YAMLMap.Parsed | YAMLSeq.Parsed): unknown {
  return node.toJSON();
}

/** The YAML tags for CloudFormation's short forms, producing the long forms. */
export const CLOUDFORMATION_TAGS: readonly (ScalarTag | CollectionTag)[] = [
  { tag: '!Ref', resolve: (value: string) => ({ Ref: value }) },
  { tag: '!Condition', resolve: (value: string) => ({ Condition: value }) },
  // `!GetAtt Resource.Attribute` splits at the first dot; the list form is kept as is.
  {
    tag: '!GetAtt',
    resolve: (value: string) => {
      const dot = value.indexOf('.');
      return { 'Fn::GetAtt': dot < 0 ? [value] : [value.slice(0, dot), value.slice(dot + 1)] };
    },
  },
  { tag: '!GetAtt', collection: 'seq', resolve: (node) => ({ 'Fn::GetAtt': toJs(node) }) },
  ...FUNCTIONS.flatMap((name): (ScalarTag | CollectionTag)[] => [
    { tag: `!${name}`, resolve: (value: string) => ({ [`Fn::${name}`]: value }) },
    { tag: `!${name}`, collection: 'seq', resolve: (node) => ({ [`Fn::${name}`]: toJs(node) }) },
    { tag: `!${name}`, collection: 'map', resolve: (node) => ({ [`Fn::${name}`]: toJs(node) }) },
  ]),
];

/**
 * Parses a CloudFormation YAML template.
 * @throws Error listing every YAML error and warning (an unknown `!Tag` is a warning in `yaml`, an error here).
 */
export function parseTemplate(text: string): CfnTemplate {
  const doc = parseDocument(text, { customTags: [...CLOUDFORMATION_TAGS], prettyErrors: true });
  const problems = [...doc.errors, ...doc.warnings].map((e) => e.message);
  if (problems.length > 0) throw new Error(`template does not parse:\n${problems.join('\n')}`);
  const template = doc.toJS() as unknown;
  if (!isRecord(template) || !isRecord(template['Resources'])) {
    throw new Error('template has no Resources section');
  }
  return template as unknown as CfnTemplate;
}

/**
 * The values an expression may take once deployed, for checks that look inside properties: both branches of
 * `Fn::If`, nothing for `Ref: AWS::NoValue`, nothing for other intrinsics (their value is only known at
 * deploy time), and the value itself otherwise.
 */
export function expandIntrinsics(value: unknown): unknown[] {
  if (isIntrinsic(value)) {
    const [name, args] = Object.entries(value)[0];
    if (name === 'Fn::If' && Array.isArray(args)) {
      return args.slice(1).flatMap((branch: unknown) => expandIntrinsics(branch));
    }
    return [];
  }
  return [value];
}

/** True for `{ Ref: ... }`, `{ Condition: ... }` and `{ 'Fn::...': ... }`. */
export function isIntrinsic(value: unknown): value is Record<string, unknown> {
  if (!isRecord(value)) return false;
  const keys = Object.keys(value);
  return keys.length === 1 && (keys[0] === 'Ref' || keys[0] === 'Condition' || keys[0].startsWith('Fn::'));
}

/**
 * Checks a template's internal references and returns one line per problem (`[]` when all resolve):
 * `Ref` and `Fn::Sub` variables name a parameter, resource or pseudo-parameter; `Fn::GetAtt` names a
 * resource (and, for known types, one of its attributes); `Fn::If`, `Condition` and resource/output
 * conditions name a condition; `DependsOn` names a resource; interface parameter groups name parameters; every
 * parameter and condition is used somewhere.
 */
export function checkReferences(template: CfnTemplate): string[] {
  const problems: string[] = [];
  const parameters = new Set(Object.keys(template.Parameters ?? {}));
  const conditions = new Set(Object.keys(template.Conditions ?? {}));
  const resources = template.Resources;
  const usedParameters = new Set<string>();
  const usedConditions = new Set<string>();

  const refTarget = (name: string, where: string, what: string): void => {
    if (parameters.has(name)) usedParameters.add(name);
    else if (!(name in resources) && !PSEUDO_PARAMETERS.includes(name)) {
      problems.push(`${where}: ${what} '${name}' is not a parameter, resource or pseudo-parameter`);
    }
  };
  const getAttTarget = (resource: string, attribute: string | undefined, where: string): void => {
    const target = resources[resource];
    if (target === undefined) {
      problems.push(`${where}: Fn::GetAtt of '${resource}', which is not a resource`);
      return;
    }
    const known = KNOWN_ATTRIBUTES[target.Type];
    if (attribute === undefined || (known !== undefined && !known.includes(attribute))) {
      problems.push(`${where}: ${target.Type} '${resource}' has no attribute '${String(attribute)}'`);
    }
  };
  const conditionName = (name: unknown, where: string): void => {
    if (typeof name !== 'string' || !conditions.has(name)) {
      problems.push(`${where}: condition '${String(name)}' is not defined`);
    } else usedConditions.add(name);
  };

  const walk = (value: unknown, where: string, inConditions: boolean): void => {
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `${where}[${i}]`, inConditions));
      return;
    }
    if (!isRecord(value)) return;
    if (isIntrinsic(value)) {
      const [name, args] = Object.entries(value)[0];
      switch (name) {
        case 'Ref':
          if (typeof args !== 'string') problems.push(`${where}: Ref needs a name`);
          else refTarget(args, where, 'Ref');
          return;
        case 'Condition':
          // Only inside the Conditions section is `{ Condition: name }` a function.
          if (inConditions) {
            conditionName(args, where);
            return;
          }
          break;
        case 'Fn::GetAtt': {
          const parts = Array.isArray(args) ? args : [];
          if (typeof parts[0] !== 'string') problems.push(`${where}: Fn::GetAtt needs [resource, attribute]`);
          else getAttTarget(parts[0], typeof parts[1] === 'string' ? parts[1] : undefined, where);
          return;
        }
        case 'Fn::If':
          if (!Array.isArray(args) || args.length !== 3) {
            problems.push(`${where}: Fn::If needs [condition, ifTrue, ifFalse]`);
            return;
          }
          conditionName(args[0], where);
          walk(args.slice(1), `${where}.Fn::If`, inConditions);
          return;
        case 'Fn::Sub': {
          const [text, variables]: unknown[] = Array.isArray(args) ? (args as unknown[]) : [args, {}];
          if (typeof text !== 'string' || !isRecord(variables)) {
            problems.push(`${where}: Fn::Sub needs a string or [string, {variables}]`);
            return;
          }
          for (const variable of subVariables(text)) {
            if (variable in variables) continue;
            const dot = variable.indexOf('.');
            if (dot > 0 && !PSEUDO_PARAMETERS.includes(variable)) {
              getAttTarget(variable.slice(0, dot), variable.slice(dot + 1), `${where} \${${variable}}`);
            } else refTarget(variable, where, 'Fn::Sub variable');
          }
          walk(variables, `${where}.Fn::Sub`, inConditions);
          return;
        }
        default:
          break;
      }
    }
    for (const [key, item] of Object.entries(value)) walk(item, `${where}.${key}`, inConditions);
  };

  for (const [name, condition] of Object.entries(template.Conditions ?? {})) {
    walk(condition, `Conditions.${name}`, true);
  }
  for (const [name, rule] of Object.entries(template.Rules ?? {})) walk(rule, `Rules.${name}`, false);
  for (const [name, resource] of Object.entries(resources)) {
    const where = `Resources.${name}`;
    if (typeof resource.Type !== 'string') problems.push(`${where}: no Type`);
    if (resource.Condition !== undefined) conditionName(resource.Condition, `${where}.Condition`);
    for (const dependency of [resource.DependsOn ?? []].flat()) {
      if (!(dependency in resources)) problems.push(`${where}.DependsOn: '${dependency}' is not a resource`);
    }
    walk(resource.Properties, `${where}.Properties`, false);
  }
  for (const [name, output] of Object.entries(template.Outputs ?? {})) {
    if (output.Condition !== undefined) conditionName(output.Condition, `Outputs.${name}.Condition`);
    walk(output.Value, `Outputs.${name}.Value`, false);
    walk(output.Export, `Outputs.${name}.Export`, false);
  }
  const groups = (
    template.Metadata?.['AWS::CloudFormation::Interface'] as
      { ParameterGroups?: { Parameters?: string[] }[] } | undefined
  )?.ParameterGroups;
  for (const name of (groups ?? []).flatMap((g) => g.Parameters ?? [])) {
    if (!parameters.has(name)) problems.push(`Metadata: parameter group names unknown parameter '${name}'`);
  }

  for (const name of parameters) {
    if (!usedParameters.has(name)) problems.push(`Parameters.${name}: never referenced`);
  }
  for (const name of conditions) {
    if (!usedConditions.has(name)) problems.push(`Conditions.${name}: never used`);
  }
  return problems;
}

/** The `${Name}` variables of an `Fn::Sub` string; `${!Literal}` is an escaped literal, not a variable. */
export function subVariables(text: string): string[] {
  return [...text.matchAll(/\$\{([^}]*)\}/g)].map((m) => m[1].trim()).filter((name) => !name.startsWith('!'));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
