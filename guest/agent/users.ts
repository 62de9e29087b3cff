/**
 * Docker's `User` string ("", "1000", "1000:1000", "nobody", "nobody:nogroup") resolved against a
 * container's /etc/passwd and /etc/group, with dockerd's semantics (runc's GetExecUser as moby
 * calls it), measured against dockerd 20.10 on this machine:
 *
 * - "" means uid 0; a user found in passwd (by name, or by uid when numeric) gives its gid and home;
 * - a numeric uid without a passwd entry is used as is, with gid 0 and home "/";
 * - a name without a passwd entry fails: `unable to find user NAME: no matching entries in passwd file`;
 * - an explicit group (name or number) replaces the gid and suppresses supplementary groups; a group
 *   name without an entry fails: `unable to find group NAME: no matching entries in group file`;
 * - additionalGids are the gid first, then the groups listing the matched user name as a member.
 *
 * Pure functions: the caller reads the files (inside the rootfs, see rootfs-path.ts).
 */

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  /** The user's home directory ("/" when the user has no passwd entry), for HOME. */
  home: string;
}

/** A user string that names no existing user or group; the message is dockerd's. */
export class UserLookupError extends Error {}

const MAX_ID = 2 ** 31 - 1;

function lines(text: string): string[][] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

/** Like Go's strconv.Atoi as runc's parser uses it: anything unparsable counts as 0. */
function toId(field: string | undefined): number {
  if (field === undefined || !/^\d+$/.test(field)) return 0;
  const n = Number(field);
  return n > MAX_ID ? 0 : n;
}

export function parsePasswd(text: string): PasswdEntry[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    uid: toId(f[2]),
    gid: toId(f[3]),
    home: f[5] ?? '',
  }));
}

export function parseGroup(text: string): GroupEntry[] {
  return lines(text).map((f) => ({
    name: f[0] ?? '',
    gid: toId(f[2]),
    members: (f[3] ?? '')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m !== ''),
  }));
}

/** A decimal id as Docker accepts it, or undefined when `s` is a name. */
function numericId(s: string): number | undefined {
  if (!/^\d+$/.test(s)) return undefined;
  const n = Number(s);
  if (n > MAX_ID) throw new UserLookupError('uids and gids must be in range 0-' + MAX_ID);
  return n;
}

/**
 * Resolves `spec`. `passwd`/`group` are undefined when the file does not exist in the rootfs (then
 * only numeric ids work, as with dockerd).
 */
export function resolveUser(
  spec: string,
  passwd: PasswdEntry[] | undefined,
  group: GroupEntry[] | undefined,
): ResolvedUser {
  const colon = spec.indexOf(':');
  const userArg = colon < 0 ? spec : spec.slice(0, colon);
  const groupArg = colon < 0 ? '' : spec.slice(colon + 1);
  const uidArg = numericId(userArg);
  const gidArg = numericId(groupArg);

  let uid = 0;
  let gid = 0;
  let home = '/';
  let matchedName = '';

  const match = (passwd ?? []).find((u) =>
    userArg === '' ? u.uid === 0 : uidArg !== undefined ? u.uid === uidArg : u.name === userArg,
  );
  if (match) {
    matchedName = match.name;
    uid = match.uid;
    gid = match.gid;
    home = match.home;
  } else if (userArg !== '') {
    if (uidArg === undefined) {
      throw new UserLookupError(`unable to find user ${userArg}: no matching entries in passwd file`);
    }
    uid = uidArg;
  }

  let supplementary: number[] = [];
  if (groupArg !== '') {
    const g = (group ?? []).find((e) => (gidArg !== undefined ? e.gid === gidArg : e.name === groupArg));
    if (g) {
      gid = g.gid;
    } else if (gidArg !== undefined) {
      gid = gidArg;
    } else {
      throw new UserLookupError(`unable to find group ${groupArg}: no matching entries in group file`);
    }
  } else if (matchedName !== '') {
    supplementary = (group ?? []).filter((g) => g.members.includes(matchedName)).map((g) => g.gid);
  }

  const additionalGids: number[] = [];
  for (const g of [gid, ...supplementary]) {
    if (!additionalGids.includes(g)) additionalGids.push(g);
  }
  return { uid, gid, additionalGids, home: home === '' ? '/' : home };
}
