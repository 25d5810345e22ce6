import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

/**
 * A loopback stand-in for AWS STS, as IRSA on EKS uses it: the sidecar's default credential chain exchanges the
 * web identity token for role credentials with AssumeRoleWithWebIdentity at AWS_ENDPOINT_URL_STS. While
 * `failing` is true it answers 500 InternalFailure, as STS does in an outage.
 */
export async function startStsServer(accessKeyId: string) {
  const state = { failing: false, calls: 0 };
  const server = createServer((req, res) => {
    req.resume();
    req.once('end', () => {
      state.calls++;
      res.writeHead(state.failing ? 500 : 200, { 'content-type': 'text/xml' });
      res.end(
        state.failing
          ? '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Receiver</Type><Code>InternalFailure</Code><Message>An internal error occurred.</Message></Error><RequestId>0</RequestId></ErrorResponse>'
          : `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>${accessKeyId}</AccessKeyId><SecretAccessKey>irsa-secret</SecretAccessKey><SessionToken>irsa-session</SessionToken><Expiration>${new Date(Date.now() + 24 * 3600_000).toISOString()}</Expiration></Credentials><SubjectFromWebIdentityToken>system:serviceaccount:default:metering</SubjectFromWebIdentityToken><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/metering/pod</Arn><AssumedRoleId>AROAEXAMPLE:pod</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>0</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`,
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    state,
    /** The environment the EKS Pod Identity webhook for IRSA sets, pointed at this server; writes the token. */
    env(dir: string): Record<string, string> {
      const tokenFile = join(dir, 'web-identity-token');
      writeFileSync(tokenFile, 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZXRlcmluZyJ9.c2lnbmF0dXJl');
      return {
        AWS_ROLE_ARN: 'arn:aws:iam::123456789012:role/metering',
        AWS_WEB_IDENTITY_TOKEN_FILE: tokenFile,
        AWS_ENDPOINT_URL_STS: url,
        AWS_CONTAINER_CREDENTIALS_FULL_URI: '',
      };
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
