import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import {
  chainIds,
  createV1Id,
  goContainerConfig,
  goMarshal,
  goString,
  goTime,
  goObject,
  v1ImageFields,
  v1ImageOfConfig,
} from './go-json';
import {
  BUSYBOX_CONFIG,
  BUSYBOX_V1_ID,
  BUSYBOX_V1_JSON,
  ML2_CONFIG,
  ML2_V1_IDS,
  ML2_V1_JSONS,
} from './testing/dockerd-reference';

describe('go-json', () => {
  it("escapes like Go's encoder", () => {
    assert.equal(goString('a<b>&c'), '"a\\u003cb\\u003e\\u0026c"');
    assert.equal(goString('line\u2028sep'), '"line\\u2028sep"');
    assert.equal(goMarshal({ b: 1, a: [true, null, 'x'] }), '{"a":[true,null,"x"],"b":1}');
  });

  it('writes container.Config in struct order, as in the configs dockerd stores', () => {
    const config = JSON.parse(ML2_CONFIG) as { config: unknown; container_config: unknown };
    const fromFile = (key: 'config' | 'container_config'): string => {
      const start = ML2_CONFIG.indexOf(`"${key}":`) + key.length + 3;
      let depth = 0;
      for (let i = start; ; i++) {
        if (ML2_CONFIG[i] === '{') depth++;
        if (ML2_CONFIG[i] === '}' && --depth === 0) return ML2_CONFIG.slice(start, i + 1);
      }
    };
    assert.equal(goContainerConfig(config.config), fromFile('config'));
    assert.equal(goContainerConfig(config.container_config), fromFile('container_config'));
  });

  it('formats times as Go does', () => {
    assert.equal(goTime('2026-11-29T20:45:49.503336422Z'), '2026-11-29T20:45:49.503336422Z');
    assert.equal(goTime('2024-01-02T03:04:05.100Z'), '2024-01-02T03:04:05.1Z');
    assert.equal(goTime('2024-01-02T03:04:05+00:00'), '2024-01-02T03:04:05Z');
    assert.equal(goTime(undefined), '0001-01-01T00:00:00Z');
  });

  it("computes dockerd's legacy v1 ids and layer json for a one-layer image", () => {
    const config = JSON.parse(BUSYBOX_CONFIG) as Record<string, unknown>;
    const diffIDs = (config.rootfs as { diff_ids: string[] }).diff_ids;
    const v1 = v1ImageOfConfig(config);
    const id = createV1Id(v1, chainIds(diffIDs)[0] as string);
    assert.equal(id, `sha256:${BUSYBOX_V1_ID}`);
    assert.equal(goObject(v1ImageFields({ ...v1, id: id.slice(7), os: 'linux' })), BUSYBOX_V1_JSON);
  });

  it('computes the v1 ids and jsons of a three-layer image with parents', () => {
    const config = JSON.parse(ML2_CONFIG) as Record<string, unknown>;
    const diffIDs = (config.rootfs as { diff_ids: string[] }).diff_ids;
    const chains = chainIds(diffIDs);
    let parent = '';
    for (const [i, chain] of chains.entries()) {
      const top = i === chains.length - 1;
      const v1 = top ? v1ImageOfConfig(config) : { created: '1970-01-01T00:00:00Z' };
      const id = createV1Id(v1, chain, parent);
      assert.equal(id.slice(7), ML2_V1_IDS[i], `layer ${i}`);
      const json = goObject(
        v1ImageFields({
          ...v1,
          id: id.slice(7),
          ...(parent ? { parent: parent.slice(7) } : {}),
          os: 'linux',
        }),
      );
      assert.equal(json, ML2_V1_JSONS[i], `layer ${i} json`);
      parent = id;
    }
  });

  it('chain ids follow the OCI definition', () => {
    const a = `sha256:${'a'.repeat(64)}`;
    const b = `sha256:${'b'.repeat(64)}`;
    const expected = `sha256:${createHash('sha256').update(`${a} ${b}`).digest('hex')}`;
    assert.deepEqual(chainIds([a, b]), [a, expected]);
  });
});
