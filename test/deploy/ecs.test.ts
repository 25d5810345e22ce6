/**
 * The ECS deployment files (ecs/): both task definitions against the ECS API model and against what the
 * sidecar needs (entitlement before the app starts, flush before it is killed, task role, volumes), the task
 * role policy, and the CloudFormation template's references and its agreement with the Fargate file.
 */
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type {
  ContainerDefinition,
  KeyValuePair,
  RegisterTaskDefinitionCommandInput,
  Volume,
} from '@aws-sdk/client-ecs';
import { describe, expect, it } from 'vitest';
import { ENVIRONMENT_VARIABLES, loadConfig, type Config } from '../../src/config.js';
import { EXIT } from '../../src/exitCodes.js';
import {
  checkReferences,
  expandIntrinsics,
  parseTemplate,
  subVariables,
  type CfnTemplate,
} from '../helpers/cloudformation.js';
import {
  ENUM_FIELDS,
  REGISTER_TASK_DEFINITION_SCHEMA,
  fromCloudFormation,
  requiredMembers,
  schemaAt,
  validateTaskDefinition,
} from '../helpers/ecsValidator.js';

const ECS_DIR = new URL('../../ecs/', import.meta.url);
const SIDECAR = 'metering-sidecar';
const APP = 'app';
const HEALTHCHECK_COMMAND = ['CMD', 'metering-sidecar', 'healthcheck'];
const METERING_ACTIONS = ['aws-marketplace:MeterUsage', 'aws-marketplace:RegisterUsage'];

/**
 * Documented ranges the SDK model does not carry (ECS API reference, HealthCheck).
 * Interval 5-300 s, timeout 2-60 s, retries 1-10, startPeriod 0-300 s.
 */
const HEALTH_CHECK_LIMITS = {
  interval: [5, 300],
  timeout: [2, 60],
  retries: [1, 10],
  startPeriod: [0, 300],
} as const;

/** `metering-sidecar healthcheck` answers within 2 s (docs/operations.md); the timeout must leave room. */
const HEALTHCHECK_COMMAND_SECONDS = 2;

/**
 * Entitlement retries throttling at startup, so failed checks must not count for a while. Two minutes is the
 * floor these files promise; they use the 300 s maximum.
 */
const MIN_START_PERIOD_SECONDS = 120;

/** The handoff directory's EFS volume both task definitions show (docs/deploy-ecs.md, "Fleets"). */
const HANDOFF_VOLUME = {
  name: 'metering-handoff',
  efsVolumeConfiguration: {
    fileSystemId: 'fs-REPLACE_WITH_FILE_SYSTEM_ID',
    transitEncryption: 'ENABLED',
    authorizationConfig: { accessPointId: 'fsap-REPLACE_WITH_ACCESS_POINT_ID' },
  },
};

/** Fargate's largest `stopTimeout` (ContainerDefinition.stopTimeout in the ECS API reference). */
const FARGATE_MAX_STOP_TIMEOUT_SECONDS = 120;

function readText(name: string): string {
  return readFileSync(new URL(name, ECS_DIR), 'utf8');
}

function readTaskDefinition(name: string): RegisterTaskDefinitionCommandInput {
  return JSON.parse(readText(name)) as RegisterTaskDefinitionCommandInput;
}

function containerOf(
  containers: readonly ContainerDefinition[] | undefined,
  name: string,
): ContainerDefinition {
  const found = (containers ?? []).filter((c) => c.name === name);
  if (found.length !== 1) throw new Error(`expected one container named ${name}, found ${found.length}`);
  return found[0];
}

function environmentOf(container: ContainerDefinition): Record<string, string> {
  const pairs = (container.environment ?? []).map((e: KeyValuePair) => [e.name ?? '', e.value ?? '']);
  return Object.fromEntries(pairs) as Record<string, string>;
}

/** The sidecar's settings as the sidecar itself reads them; ECS sets AWS_REGION, so a Region is added. */
function sidecarConfig(container: ContainerDefinition): Config {
  return loadConfig({ ...environmentOf(container), AWS_REGION: 'us-east-1' });
}

describe('the ECS task definition validator', () => {
  const fargate = readTaskDefinition('task-definition.fargate.json');

  it('reads the required members of the model', () => {
    expect(requiredMembers(REGISTER_TASK_DEFINITION_SCHEMA)).toEqual(['family', 'containerDefinitions']);
    expect(requiredMembers(schemaAt('containerDefinitions.dependsOn'))).toEqual([
      'containerName',
      'condition',
    ]);
    expect(requiredMembers(schemaAt('containerDefinitions.secrets'))).toEqual(['name', 'valueFrom']);
    expect(requiredMembers(schemaAt('containerDefinitions.healthCheck'))).toEqual(['command']);
  });

  it('maps every enum to a string field that exists in the model', () => {
    // Prepare: every `Structure.member` whose values are strings, by walking the model.
    const stringFields = new Set<string>();
    const seen = new Set<string>();
    const walk = (schema: typeof REGISTER_TASK_DEFINITION_SCHEMA): void => {
      if (schema.isListSchema() || schema.isMapSchema()) return walk(schema.getValueSchema());
      if (!schema.isStructSchema()) return;
      const name = schema.getName() ?? '?';
      if (seen.has(name)) return;
      seen.add(name);
      for (const [member, memberSchema] of Object.entries(schema.getMemberSchemas())) {
        const leaf = memberSchema.isListSchema() ? memberSchema.getValueSchema() : memberSchema;
        if (leaf.isStringSchema()) stringFields.add(`${name}.${member}`);
        walk(memberSchema);
      }
    };
    walk(REGISTER_TASK_DEFINITION_SCHEMA);

    // Assess: a misspelt key would never fire, so each must name a real string field.
    for (const [field, values] of Object.entries(ENUM_FIELDS)) {
      expect(stringFields, field).toContain(field);
      expect(Object.values(values).length, field).toBeGreaterThan(0);
    }
    expect(Object.keys(ENUM_FIELDS)).toEqual(
      expect.arrayContaining([
        'RegisterTaskDefinitionRequest.networkMode',
        'RegisterTaskDefinitionRequest.requiresCompatibilities',
        'LogConfiguration.logDriver',
        'PortMapping.protocol',
        'PortMapping.appProtocol',
        'ContainerDependency.condition',
        'RegisterTaskDefinitionRequest.pidMode',
        'RegisterTaskDefinitionRequest.ipcMode',
        'RuntimePlatform.cpuArchitecture',
        'RuntimePlatform.operatingSystemFamily',
        'DockerVolumeConfiguration.scope',
      ]),
    );
  });

  it('reports unknown fields, bad enums, wrong types and missing required members', () => {
    // Prepare: a broken copy of the Fargate task definition.
    const broken = structuredClone(fargate) as unknown as {
      networkMode: unknown;
      requiresCompatibilities: unknown[];
      volumes: Record<string, unknown>[];
      containerDefinitions: Record<string, unknown>[];
    };
    broken.networkMode = 'vpc';
    broken.requiresCompatibilities = ['FARGATE', 'LAMBDA'];
    broken.volumes[0]['dockerVolumeConfiguration'] = { scope: 'pod' };
    const sidecar = broken.containerDefinitions[0];
    sidecar['essentail'] = true;
    (sidecar['healthCheck'] as Record<string, unknown>)['interval'] = '10';
    (sidecar['portMappings'] as Record<string, unknown>[])[0]['protocol'] = 'TCP';
    sidecar['readonlyRootFilesystem'] = 'true';
    const app = broken.containerDefinitions[1];
    delete (app['dependsOn'] as Record<string, unknown>[])[0]['condition'];
    (app['environment'] as Record<string, unknown>[])[0]['value'] = 8181;

    // Act
    const errors = validateTaskDefinition(broken);

    // Assess
    expect(errors).toEqual([
      "$.networkMode: 'vpc' not one of awsvpc|bridge|host|none",
      "$.requiresCompatibilities[1]: 'LAMBDA' not one of EC2|EXTERNAL|FARGATE|MANAGED_INSTANCES",
      "$.volumes[0].dockerVolumeConfiguration.scope: 'pod' not one of shared|task",
      '$.containerDefinitions[0].readonlyRootFilesystem: expected boolean, got string',
      "$.containerDefinitions[0].portMappings[0].protocol: 'TCP' not one of tcp|udp",
      '$.containerDefinitions[0].healthCheck.interval: expected integer, got string',
      "$.containerDefinitions[0]: unknown field 'essentail'",
      "$.containerDefinitions[1].dependsOn[0]: missing required 'condition'",
      '$.containerDefinitions[1].environment[0].value: expected string, got number',
    ]);
  });

  it('rejects fields that only describe-task-definition returns', () => {
    const described = {
      ...fargate,
      taskDefinitionArn: 'arn:aws:ecs:us-east-1:123456789012:task-definition/x:1',
      revision: 1,
    };

    expect(validateTaskDefinition(described)).toEqual([
      "$: unknown field 'taskDefinitionArn'",
      "$: unknown field 'revision'",
    ]);
  });

  it('reports a missing family and containerDefinitions', () => {
    expect(validateTaskDefinition({})).toEqual([
      "$: missing required 'family'",
      "$: missing required 'containerDefinitions'",
    ]);
  });

  it('renames CloudFormation properties to API members, case-insensitively and only on structures', () => {
    const converted = fromCloudFormation({
      Family: 'f',
      Volumes: [
        { Name: 'v', EFSVolumeConfiguration: { FileSystemId: 'fs-1', TransitEncryption: 'ENABLED' } },
      ],
      ContainerDefinitions: [
        {
          Name: 'c',
          LogConfiguration: { LogDriver: 'awslogs', Options: { 'awslogs-group': 'g', Mode: 'x' } },
          Essentail: true,
          Image: { 'Fn::If': ['C', 'a', { Ref: 'AWS::NoValue' }] },
        },
      ],
    });

    expect(converted).toEqual({
      family: 'f',
      volumes: [
        { name: 'v', efsVolumeConfiguration: { fileSystemId: 'fs-1', transitEncryption: 'ENABLED' } },
      ],
      containerDefinitions: [
        {
          name: 'c',
          logConfiguration: { logDriver: 'awslogs', options: { 'awslogs-group': 'g', Mode: 'x' } },
          Essentail: true,
          image: { 'Fn::If': ['C', 'a', { Ref: 'AWS::NoValue' }] },
        },
      ],
    });
    expect(validateTaskDefinition(converted, { expand: expandIntrinsics })).toEqual([
      "$.containerDefinitions[0]: unknown field 'Essentail'",
    ]);
  });
});

describe.each([
  { file: 'task-definition.fargate.json', networkMode: 'awsvpc', launchType: 'FARGATE' },
  { file: 'task-definition.ec2.json', networkMode: 'bridge', launchType: 'EC2' },
])('$file', ({ file, networkMode, launchType }) => {
  const taskDefinition = readTaskDefinition(file);
  const sidecar = containerOf(taskDefinition.containerDefinitions, SIDECAR);
  const app = containerOf(taskDefinition.containerDefinitions, APP);

  it('is a valid register-task-definition input', () => {
    expect(validateTaskDefinition(taskDefinition)).toEqual([]);
  });

  it(`runs in ${networkMode} mode on ${launchType}`, () => {
    expect(taskDefinition.networkMode).toBe(networkMode);
    expect(taskDefinition.requiresCompatibilities).toEqual([launchType]);
    expect(taskDefinition.containerDefinitions?.map((c) => c.name)).toEqual([SIDECAR, APP]);
  });

  it('meters with the task role, which is not the execution role', () => {
    const roleArn = /^arn:aws:iam::\d{12}:role\/[\w+=,.@-]+$/;

    expect(taskDefinition.taskRoleArn).toMatch(roleArn);
    expect(taskDefinition.executionRoleArn).toMatch(roleArn);
    expect(taskDefinition.taskRoleArn).not.toBe(taskDefinition.executionRoleArn);
  });

  it('gives the sidecar only variables it reads, and values it accepts', () => {
    const names = (sidecar.environment ?? []).map((e) => e.name);

    expect(names.filter((n) => !ENVIRONMENT_VARIABLES.includes(n ?? ''))).toEqual([]);
    expect(new Set(names).size).toBe(names.length);
    // ECS sets AWS_REGION to the task's own Region; credentials come from the task role, never from keys.
    expect(names).not.toContain('AWS_REGION');
    expect(names).not.toContain('AWS_ENDPOINT_URL_MARKETPLACE_METERING');
    expect(names).not.toContain('METERING_LOCAL');
    expect(names).not.toContain('METERING_DRY_RUN');
    expect(sidecar.secrets ?? []).toEqual([]);
    const config = sidecarConfig(sidecar);
    expect(config.staticCredentials).toBe(false);
    expect(config.local).toBe(false);
  });

  it('lists every sidecar setting in docs/configuration.md', () => {
    const docs = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');

    for (const { name } of sidecar.environment ?? []) expect(docs, String(name)).toContain(`\`${name}\``);
  });

  it('makes the sidecar essential and healthy only through `metering-sidecar healthcheck`', () => {
    const check = sidecar.healthCheck;

    expect(sidecar.essential).toBe(true);
    expect(check?.command).toEqual(HEALTHCHECK_COMMAND);
    for (const [field, [min, max]] of Object.entries(HEALTH_CHECK_LIMITS)) {
      const value = check?.[field as keyof typeof HEALTH_CHECK_LIMITS];
      expect(value, field).toBeGreaterThanOrEqual(min);
      expect(value, field).toBeLessThanOrEqual(max);
    }
    expect(check?.timeout).toBeGreaterThan(HEALTHCHECK_COMMAND_SECONDS);
    expect(check?.startPeriod).toBeGreaterThanOrEqual(MIN_START_PERIOD_SECONDS);
    // Admin listener on: the healthcheck asks /readyz there.
    expect(sidecarConfig(sidecar).adminListen).toEqual({ host: '0.0.0.0', port: 9181 });
  });

  // Regression: an essential sidecar that crashed stopped the task, and its task storage (the ledger) went with it.
  it('restarts a crashed sidecar in place, but not after a clean exit, a refused entitlement or bad configuration', () => {
    expect(sidecar.restartPolicy).toEqual({
      enabled: true,
      ignoredExitCodes: [EXIT.ok, EXIT.notEntitled, EXIT.config],
      restartAttemptPeriod: 60,
    });
    // ECS takes 60-1800 seconds: the shortest, so a crash soon after a restart is restarted again.
    expect(sidecar.restartPolicy?.restartAttemptPeriod).toBeGreaterThanOrEqual(60);
  });

  it('starts the app only once the sidecar is healthy', () => {
    expect(app.dependsOn).toEqual([{ containerName: SIDECAR, condition: 'HEALTHY' }]);
    expect(sidecar.dependsOn ?? []).toEqual([]);
  });

  it('gives the sidecar longer than its shutdown timeout to seal and send', () => {
    const { shutdownTimeoutSeconds } = sidecarConfig(sidecar);

    expect(sidecar.stopTimeout).toBeGreaterThan(shutdownTimeoutSeconds);
    if (launchType === 'FARGATE')
      expect(sidecar.stopTimeout).toBeLessThanOrEqual(FARGATE_MAX_STOP_TIMEOUT_SECONDS);
  });

  it('runs the sidecar non-root, read-only, without capabilities', () => {
    expect(sidecar.user).toBe('10001:10001');
    expect(sidecar.readonlyRootFilesystem).toBe(true);
    expect(sidecar.linuxParameters?.capabilities).toEqual({ drop: ['ALL'] });
    expect(sidecar.privileged ?? false).toBe(false);
  });

  it('logs both containers to CloudWatch Logs', () => {
    for (const container of [sidecar, app]) {
      expect(container.logConfiguration?.logDriver, container.name).toBe('awslogs');
      expect(Object.keys(container.logConfiguration?.options ?? {}).sort(), container.name).toEqual([
        'awslogs-group',
        'awslogs-region',
        'awslogs-stream-prefix',
      ]);
    }
    expect(sidecar.logConfiguration?.options?.['awslogs-stream-prefix']).not.toBe(
      app.logConfiguration?.options?.['awslogs-stream-prefix'],
    );
  });

  it('mounts writable task volumes where the sidecar keeps its state and socket', () => {
    // Prepare
    const config = sidecarConfig(sidecar);
    const volumes = new Map((taskDefinition.volumes ?? []).map((v) => [v.name, v]));
    const mounted = (container: ContainerDefinition): Map<string | undefined, string | undefined> =>
      new Map((container.mountPoints ?? []).map((m) => [m.containerPath, m.sourceVolume]));
    const sidecarMounts = mounted(sidecar);
    const appMounts = mounted(app);
    const socketDir = dirname(config.socketPath ?? '');

    // Assess: every mount names a volume, and every volume is mounted.
    const sources = [sidecar, app].flatMap((c) => (c.mountPoints ?? []).map((m) => m.sourceVolume));
    for (const source of sources) expect(volumes.has(source), String(source)).toBe(true);
    expect(new Set(sources)).toEqual(new Set(volumes.keys()));
    // The state directory and the socket's directory are volumes, not the read-only root filesystem.
    expect(sidecarMounts.get(config.stateDir)).toBeDefined();
    expect(sidecarMounts.get(socketDir)).toBeDefined();
    expect(sidecarMounts.get(config.stateDir)).not.toBe(sidecarMounts.get(socketDir));
    // The app shares the socket's volume, at the same path, and only that one (the ledger is the sidecar's).
    expect(appMounts.get(socketDir)).toBe(sidecarMounts.get(socketDir));
    expect(appMounts.size).toBe(1);
    // Connecting to a unix socket needs write access.
    for (const m of [...(sidecar.mountPoints ?? []), ...(app.mountPoints ?? [])])
      expect(m.readOnly).toBe(false);
  });

  it('mounts the handoff EFS volume into the sidecar only, writable, as METERING_HANDOFF_DIR', () => {
    const dir = environmentOf(sidecar)['METERING_HANDOFF_DIR'];
    const mount = (sidecar.mountPoints ?? []).find((m) => m.containerPath === dir);

    expect(mount).toEqual({ sourceVolume: HANDOFF_VOLUME.name, containerPath: dir, readOnly: false });
    expect(sidecarConfig(sidecar).handoffDir).toBe(dir);
    expect((app.mountPoints ?? []).map((m) => m.sourceVolume)).not.toContain(HANDOFF_VOLUME.name);
    // Not the state directory: the ledger's SQLite WAL never lives on NFS.
    expect(dir).not.toBe(sidecarConfig(sidecar).stateDir);
  });

  it('tells the app where the sidecar listens', () => {
    const sidecarEnv = environmentOf(sidecar);
    const appEnv = environmentOf(app);

    expect(appEnv['METERING_SOCKET']).toBe(sidecarEnv['METERING_SOCKET']);
    if (networkMode === 'awsvpc') {
      // Containers of an awsvpc task share one network namespace, so loopback reaches the sidecar.
      expect(sidecarConfig(sidecar).listen).toEqual({ host: '127.0.0.1', port: 8181 });
      expect(appEnv['METERING_LISTEN']).toBe(sidecarEnv['METERING_LISTEN']);
    } else {
      // In bridge mode each container has its own loopback: the socket is the only way in.
      expect(sidecarConfig(sidecar).listen).toBeUndefined();
      expect(appEnv['METERING_LISTEN']).toBeUndefined();
    }
  });

  if (launchType === 'FARGATE') {
    it('uses task-scoped ephemeral volumes and a Linux x86-64 platform', () => {
      expect(taskDefinition.volumes).toEqual([
        { name: 'metering-socket' },
        { name: 'metering-state' },
        HANDOFF_VOLUME,
      ]);
      expect(taskDefinition.runtimePlatform).toEqual({
        cpuArchitecture: 'X86_64',
        operatingSystemFamily: 'LINUX',
      });
      expect(taskDefinition.cpu).toMatch(/^\d+$/);
      expect(taskDefinition.memory).toMatch(/^\d+$/);
    });
  } else {
    it('uses task-scoped local Docker volumes, and EFS for the handoff directory', () => {
      const [handoff, ...local] = [...(taskDefinition.volumes ?? [])].reverse();
      for (const volume of local) {
        expect(volume.dockerVolumeConfiguration, volume.name).toEqual({ scope: 'task', driver: 'local' });
      }
      expect(local.map((v) => v.name).sort()).toEqual(['metering-socket', 'metering-state']);
      expect(handoff).toEqual(HANDOFF_VOLUME);
    });
  }
});

describe('ecs/task-role-policy.json', () => {
  const policy = JSON.parse(readText('task-role-policy.json')) as {
    Version: string;
    Statement: { Effect: string; Action: string | string[]; Resource: string | string[] }[];
  };

  it('allows exactly RegisterUsage and MeterUsage, on every resource', () => {
    expect(policy.Version).toBe('2012-10-17');
    expect(policy.Statement.every((s) => s.Effect === 'Allow')).toBe(true);
    expect(policy.Statement.every((s) => s.Resource === '*')).toBe(true);
    expect(policy.Statement.flatMap((s) => s.Action).sort()).toEqual(METERING_ACTIONS);
  });
});

describe('ecs/task-role-trust-policy.json', () => {
  it('lets only ECS tasks of the account assume the task role', () => {
    const trust = JSON.parse(readText('task-role-trust-policy.json')) as {
      Statement: {
        Effect: string;
        Principal: unknown;
        Action: unknown;
        Condition: Record<string, unknown>;
      }[];
    };

    expect(trust.Statement).toHaveLength(1);
    expect(trust.Statement[0]).toMatchObject({
      Effect: 'Allow',
      Principal: { Service: 'ecs-tasks.amazonaws.com' },
      Action: 'sts:AssumeRole',
    });
    expect(Object.keys(trust.Statement[0].Condition).sort()).toEqual(['ArnLike', 'StringEquals']);
  });
});

describe('ecs/cloudformation.yaml', () => {
  const template = parseTemplate(readText('cloudformation.yaml'));
  const fargate = readTaskDefinition('task-definition.fargate.json');
  const properties = (name: string): Record<string, unknown> => {
    const resource = template.Resources[name];
    if (resource?.Properties === undefined) throw new Error(`no resource ${name} with properties`);
    return resource.Properties;
  };
  const taskDefinition = fromCloudFormation(
    properties('TaskDefinition'),
  ) as RegisterTaskDefinitionCommandInput;
  const sidecar = containerOf(taskDefinition.containerDefinitions, SIDECAR);
  const jsonSidecar = containerOf(fargate.containerDefinitions, SIDECAR);

  it('turns every intrinsic short form into its long form', () => {
    const parsed = parseTemplate(
      [
        'Resources:',
        '  R:',
        '    Type: T',
        '    Properties:',
        '      Ref: !Ref P',
        '      Sub: !Sub "${AWS::Region}-x"',
        '      SubList: !Sub ["${A}", { A: !Ref P }]',
        '      GetAtt: !GetAtt R.Arn.Sub',
        '      GetAttList: !GetAtt [R, Arn]',
        '      If: !If [C, 1, !Ref AWS::NoValue]',
        '      Equals: !Equals [a, b]',
        '      Not: !Not [!Condition C]',
        '      And: !And [!Condition C, !Condition D]',
        '      Or: !Or [!Condition C, !Condition D]',
        '      Join: !Join [",", [a, b]]',
        '      Select: !Select [0, !GetAZs ""]',
        '      Split: !Split [",", "a,b"]',
        '      FindInMap: !FindInMap [M, K, V]',
        '      Base64: !Base64 text',
        '      Cidr: !Cidr [10.0.0.0/16, 2, 8]',
        '      ImportValue: !ImportValue other-stack-Vpc',
      ].join('\n'),
    );

    expect(parsed.Resources['R'].Properties).toEqual({
      Ref: { Ref: 'P' },
      Sub: { 'Fn::Sub': '${AWS::Region}-x' },
      SubList: { 'Fn::Sub': ['${A}', { A: { Ref: 'P' } }] },
      GetAtt: { 'Fn::GetAtt': ['R', 'Arn.Sub'] },
      GetAttList: { 'Fn::GetAtt': ['R', 'Arn'] },
      If: { 'Fn::If': ['C', 1, { Ref: 'AWS::NoValue' }] },
      Equals: { 'Fn::Equals': ['a', 'b'] },
      Not: { 'Fn::Not': [{ Condition: 'C' }] },
      And: { 'Fn::And': [{ Condition: 'C' }, { Condition: 'D' }] },
      Or: { 'Fn::Or': [{ Condition: 'C' }, { Condition: 'D' }] },
      Join: { 'Fn::Join': [',', ['a', 'b']] },
      Select: { 'Fn::Select': [0, { 'Fn::GetAZs': '' }] },
      Split: { 'Fn::Split': [',', 'a,b'] },
      FindInMap: { 'Fn::FindInMap': ['M', 'K', 'V'] },
      Base64: { 'Fn::Base64': 'text' },
      Cidr: { 'Fn::Cidr': ['10.0.0.0/16', 2, 8] },
      ImportValue: { 'Fn::ImportValue': 'other-stack-Vpc' },
    });
  });

  it('refuses a template with an unknown tag', () => {
    expect(() => parseTemplate('Resources:\n  R:\n    Type: T\n    Properties: { A: !Reff P }\n')).toThrow(
      /Reff/,
    );
  });

  it('finds references that point at nothing', () => {
    // Prepare
    const broken: CfnTemplate = parseTemplate(
      [
        'Parameters:',
        '  Used: { Type: String }',
        '  Unused: { Type: String }',
        'Conditions:',
        '  C: !Equals [!Ref Used, x]',
        '  D: !Not [!Condition Missing]',
        'Resources:',
        '  Role:',
        '    Type: AWS::IAM::Role',
        '    Condition: C',
        '    DependsOn: Nothing',
        '    Properties:',
        '      A: !Ref Nope',
        '      B: !GetAtt Ghost.Arn',
        '      C: !GetAtt Role.Name',
        '      D: !If [E, 1, 2]',
        '      E: !Sub "${Used}-${AWS::Region}-${Role.Arn}-${!Literal}-${Typo}"',
        '      F: !Sub ["${X}-${Y}", { X: !Ref Used }]',
      ].join('\n'),
    );

    // Act
    const problems = checkReferences(broken);

    // Assess
    expect(problems).toEqual([
      "Conditions.D.Fn::Not[0]: condition 'Missing' is not defined",
      "Resources.Role.DependsOn: 'Nothing' is not a resource",
      "Resources.Role.Properties.A: Ref 'Nope' is not a parameter, resource or pseudo-parameter",
      "Resources.Role.Properties.B: Fn::GetAtt of 'Ghost', which is not a resource",
      "Resources.Role.Properties.C: AWS::IAM::Role 'Role' has no attribute 'Name'",
      "Resources.Role.Properties.D: condition 'E' is not defined",
      "Resources.Role.Properties.E: Fn::Sub variable 'Typo' is not a parameter, resource or pseudo-parameter",
      "Resources.Role.Properties.F: Fn::Sub variable 'Y' is not a parameter, resource or pseudo-parameter",
      'Parameters.Unused: never referenced',
      'Conditions.D: never used',
    ]);
  });

  it('reads Fn::Sub variables, skipping ${!Literal}', () => {
    expect(subVariables('arn:${AWS::Partition}:ecs:${ AWS::Region }:${Role.Arn}:${!Literal}')).toEqual([
      'AWS::Partition',
      'AWS::Region',
      'Role.Arn',
    ]);
  });

  it('has only references that resolve, and uses every parameter and condition', () => {
    expect(checkReferences(template)).toEqual([]);
  });

  it('declares a task definition that is valid for the ECS API in every branch', () => {
    expect(template.Resources['TaskDefinition'].Type).toBe('AWS::ECS::TaskDefinition');
    expect(validateTaskDefinition(taskDefinition, { expand: expandIntrinsics })).toEqual([]);
    expect(taskDefinition.family).toEqual({ Ref: 'AWS::StackName' });
  });

  it('runs the Fargate task definition shape: awsvpc, Fargate by default, both containers', () => {
    expect(taskDefinition.networkMode).toBe('awsvpc');
    expect(taskDefinition.requiresCompatibilities).toEqual([{ Ref: 'LaunchType' }]);
    expect(template.Parameters?.['LaunchType']?.Default).toBe('FARGATE');
    expect(taskDefinition.containerDefinitions?.map((c) => c.name)).toEqual([SIDECAR, APP]);
    // Every volume of the JSON file, the handoff one when Handoff=efs.
    const volumes = (taskDefinition.volumes ?? []).flatMap((v) => expandIntrinsics(v) as Volume[]);
    expect(volumes.map((v) => v.name)).toEqual(fargate.volumes?.map((v) => v.name));
  });

  it('configures the sidecar as the Fargate JSON file does', () => {
    // Prepare: the variables set in every branch, and those only set when a parameter is given.
    const always = (sidecar.environment ?? []).filter((e) => !('Fn::If' in e));
    const optional = (sidecar.environment ?? [])
      .filter((e) => 'Fn::If' in e)
      .flatMap((e) => expandIntrinsics(e) as KeyValuePair[]);
    const jsonEnv = environmentOf(jsonSidecar);

    // Assess: same names (the JSON file shows the handoff directory, which the template sets with
    // Handoff=efs); same values wherever the template has a literal.
    expect(
      [...always, ...optional.filter((e) => e.name === 'METERING_HANDOFF_DIR')].map((e) => e.name).sort(),
    ).toEqual(Object.keys(jsonEnv).sort());
    for (const { name, value } of [...always, ...optional]) {
      if (typeof value === 'string' && name !== 'METERING_PUBLIC_KEY')
        expect(value, String(name)).toBe(jsonEnv[name ?? '']);
    }
    // METERING_DIMENSIONS is always set: the sidecar requires it outside local mode.
    expect(optional.map((e) => e.name).sort()).toEqual(['METERING_HANDOFF_DIR', 'METERING_PUBLIC_KEY']);
    expect(always.map((e) => e.name)).toContain('METERING_DIMENSIONS');
    const allNames = [...always, ...optional].map((e) => e.name ?? '');
    expect(allNames.filter((n) => !ENVIRONMENT_VARIABLES.includes(n))).toEqual([]);
    for (const field of [
      'essential',
      'healthCheck',
      'user',
      'readonlyRootFilesystem',
      'stopTimeout',
      'linuxParameters',
      'portMappings',
      'cpu',
      'memoryReservation',
      'restartPolicy',
    ] as const) {
      expect(sidecar[field], field).toEqual(jsonSidecar[field]);
    }
    expect(sidecar.logConfiguration?.logDriver).toBe('awslogs');
    // The JSON file's mounts, the handoff one when Handoff=efs.
    expect((sidecar.mountPoints ?? []).flatMap((m) => expandIntrinsics(m))).toEqual(jsonSidecar.mountPoints);
  });

  it('creates the handoff file system only with Handoff=efs: encrypted, reached only by the tasks, as 10001', () => {
    const handoffResources = Object.entries(template.Resources).filter(([name]) =>
      name.startsWith('Handoff'),
    );
    const access = properties('HandoffAccessPoint');
    const group = properties('HandoffMountTargetSecurityGroup');
    const volume = (taskDefinition.volumes ?? []).find((v) => 'Fn::If' in v) as unknown as {
      'Fn::If': [string, Volume, unknown];
    };

    expect(template.Parameters?.['Handoff']).toMatchObject({
      Default: 'none',
      AllowedValues: ['none', 'efs'],
    });
    expect(handoffResources.map(([name, r]) => [name, r.Type, r.Condition])).toEqual([
      ['HandoffFileSystem', 'AWS::EFS::FileSystem', 'HasHandoff'],
      ['HandoffMountTargetSecurityGroup', 'AWS::EC2::SecurityGroup', 'HasHandoff'],
      ['HandoffMountTarget1', 'AWS::EFS::MountTarget', 'HasHandoff'],
      ['HandoffMountTarget2', 'AWS::EFS::MountTarget', 'HasHandoffSubnet2'],
      ['HandoffAccessPoint', 'AWS::EFS::AccessPoint', 'HasHandoff'],
    ]);
    expect(properties('HandoffFileSystem')['Encrypted']).toBe(true);
    expect(access['PosixUser']).toEqual({ Uid: '10001', Gid: '10001' });
    expect(access['RootDirectory']).toMatchObject({
      CreationInfo: { OwnerUid: '10001', OwnerGid: '10001', Permissions: '0750' },
    });
    expect(group['SecurityGroupIngress']).toEqual([
      {
        IpProtocol: 'tcp',
        FromPort: 2049,
        ToPort: 2049,
        SourceSecurityGroupId: { Ref: 'HandoffClientSecurityGroup' },
      },
    ]);
    expect(volume['Fn::If'][0]).toBe('HasHandoff');
    expect(volume['Fn::If'][1]).toEqual({
      name: 'metering-handoff',
      efsVolumeConfiguration: {
        fileSystemId: { Ref: 'HandoffFileSystem' },
        transitEncryption: 'ENABLED',
        authorizationConfig: { accessPointId: { Ref: 'HandoffAccessPoint' } },
      },
    });
  });

  it('starts the app after the sidecar is healthy and shares only the socket volume', () => {
    const app = containerOf(taskDefinition.containerDefinitions, APP);
    const jsonApp = containerOf(fargate.containerDefinitions, APP);

    expect(app.dependsOn).toEqual([{ containerName: SIDECAR, condition: 'HEALTHY' }]);
    expect(app.mountPoints).toEqual(jsonApp.mountPoints);
    expect(app.environment).toEqual(jsonApp.environment);
  });

  it('gives the task role exactly the policy in task-role-policy.json, trusted by ECS tasks only', () => {
    const role = properties('TaskRole');
    const trust = role['AssumeRolePolicyDocument'] as { Statement: Record<string, unknown>[] };
    const policies = role['Policies'] as { PolicyDocument: unknown }[];
    const policyFile = JSON.parse(readText('task-role-policy.json')) as unknown;

    expect(template.Resources['TaskRole'].Type).toBe('AWS::IAM::Role');
    expect(trust.Statement).toHaveLength(1);
    expect(trust.Statement[0]).toMatchObject({
      Effect: 'Allow',
      Principal: { Service: 'ecs-tasks.amazonaws.com' },
      Action: 'sts:AssumeRole',
      Condition: {
        StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
        ArnLike: {
          'aws:SourceArn': { 'Fn::Sub': 'arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*' },
        },
      },
    });
    expect(policies).toHaveLength(1);
    expect(policies[0].PolicyDocument).toEqual(policyFile);
    expect(role['ManagedPolicyArns']).toBeUndefined();
  });

  it('uses the task role for the task and a separate execution role for ECS', () => {
    const execution = properties('ExecutionRole');

    expect(taskDefinition.taskRoleArn).toEqual({ 'Fn::GetAtt': ['TaskRole', 'Arn'] });
    expect(taskDefinition.executionRoleArn).toEqual({ 'Fn::GetAtt': ['ExecutionRole', 'Arn'] });
    expect(execution['ManagedPolicyArns']).toEqual([
      { 'Fn::Sub': 'arn:${AWS::Partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy' },
    ]);
    expect(execution['Policies']).toBeUndefined();
  });

  it('logs both containers to its own log group with the chosen retention', () => {
    expect(properties('LogGroup')['RetentionInDays']).toEqual({ Ref: 'LogRetentionInDays' });
    for (const container of taskDefinition.containerDefinitions ?? []) {
      expect(container.logConfiguration?.options?.['awslogs-group'], container.name).toEqual({
        Ref: 'LogGroup',
      });
      expect(container.logConfiguration?.options?.['awslogs-region'], container.name).toEqual({
        Ref: 'AWS::Region',
      });
    }
  });

  it('offers only entitlement modes and product codes the sidecar accepts', () => {
    const parameters = template.Parameters ?? {};
    const modes = parameters['EntitlementMode']?.AllowedValues ?? [];

    expect(modes).toEqual(['register-usage', 'dry-run', 'none']);
    for (const mode of modes) {
      const env = { METERING_PRODUCT_CODE: 'p', AWS_REGION: 'us-east-1', METERING_DIMENSIONS: 'd' };
      expect(loadConfig({ ...env, METERING_ENTITLEMENT: String(mode) }).entitlement).toBe(mode);
    }
    const pattern = new RegExp(parameters['ProductCode']?.AllowedPattern ?? '(?!)');
    expect(pattern.test('cqcvf9f0ugw8rkbgmf1c9dxyz')).toBe(true);
    expect(pattern.test('bad code!')).toBe(false);
    expect(parameters['SidecarImage']?.Default).toBe(jsonSidecar.image);
  });

  it('has parameter defaults that satisfy their own constraints', () => {
    for (const [name, parameter] of Object.entries(template.Parameters ?? {})) {
      if (parameter.Default === undefined) continue;
      const value = String(parameter.Default);
      if (parameter.AllowedValues) expect(parameter.AllowedValues.map(String), name).toContain(value);
      if (parameter.AllowedPattern) expect(value, name).toMatch(new RegExp(parameter.AllowedPattern));
      if (parameter.MinValue !== undefined)
        expect(Number(value), name).toBeGreaterThanOrEqual(parameter.MinValue);
      if (parameter.MaxValue !== undefined)
        expect(Number(value), name).toBeLessThanOrEqual(parameter.MaxValue);
    }
  });

  it('exports the task definition, the task role and the log group', () => {
    expect(template.Outputs?.['TaskDefinitionArn']?.Value).toEqual({ Ref: 'TaskDefinition' });
    expect(template.Outputs?.['TaskRoleArn']?.Value).toEqual({ 'Fn::GetAtt': ['TaskRole', 'Arn'] });
    expect(template.Outputs?.['LogGroupName']?.Value).toEqual({ Ref: 'LogGroup' });
  });
});
