/** Container ids and names, as dockerd makes and checks them. */
import { randomBytes, randomInt } from 'node:crypto';

/** 64 lowercase hex digits whose 12-digit short form is never all digits (dockerd's rule). */
export function generateId(): string {
  for (;;) {
    const id = randomBytes(32).toString('hex');
    if (!/^\d+$/.test(id.slice(0, 12))) return id;
  }
}

export function shortId(id: string): string {
  return id.slice(0, 12);
}

export function isFullId(text: string): boolean {
  return /^[0-9a-f]{64}$/.test(text);
}

/** dockerd's validContainerNamePattern: at least two characters, optional leading slash. */
const VALID_NAME = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

export function isValidContainerName(name: string): boolean {
  return VALID_NAME.test(name);
}

// Our own lists (adjectives and people who shaped computing and mathematics), in the spirit of
// dockerd's generated names.
const ADJECTIVES = [
  'admiring',
  'agile',
  'amazing',
  'bold',
  'brave',
  'bright',
  'calm',
  'careful',
  'charming',
  'clever',
  'cool',
  'curious',
  'daring',
  'dazzling',
  'eager',
  'elastic',
  'elegant',
  'epic',
  'fervent',
  'focused',
  'friendly',
  'gallant',
  'gentle',
  'happy',
  'hopeful',
  'humble',
  'jolly',
  'keen',
  'kind',
  'lucid',
  'magical',
  'merry',
  'modest',
  'nifty',
  'nimble',
  'noble',
  'patient',
  'peaceful',
  'playful',
  'quiet',
  'quirky',
  'relaxed',
  'serene',
  'sharp',
  'sleepy',
  'steady',
  'stoic',
  'sunny',
  'swift',
  'tender',
  'thirsty',
  'tidy',
  'upbeat',
  'vibrant',
  'vigilant',
  'wise',
  'witty',
  'youthful',
  'zealous',
  'zen',
];

const SURNAMES = [
  'agnesi',
  'allen',
  'babbage',
  'backus',
  'bartik',
  'bose',
  'cerf',
  'chandrasekhar',
  'curie',
  'dijkstra',
  'easley',
  'engelbart',
  'euler',
  'fermat',
  'feynman',
  'gauss',
  'germain',
  'goldberg',
  'hamilton',
  'hamming',
  'hopper',
  'hypatia',
  'jackson',
  'johnson',
  'kahan',
  'kay',
  'knuth',
  'kowalevski',
  'lamarr',
  'lamport',
  'liskov',
  'lovelace',
  'mccarthy',
  'meitner',
  'minsky',
  'mirzakhani',
  'moore',
  'napier',
  'neumann',
  'noether',
  'pascal',
  'perlman',
  'poincare',
  'ramanujan',
  'ritchie',
  'shannon',
  'shaw',
  'sinoussi',
  'spence',
  'stallman',
  'sutherland',
  'swartz',
  'tesla',
  'thompson',
  'torvalds',
  'turing',
  'vaughan',
  'wilkes',
  'wing',
  'yalow',
];

function pick(list: readonly string[]): string {
  return list[randomInt(list.length)] ?? 'capsule';
}

/** A random "adjective_surname"; `retry` > 0 appends a digit, as dockerd does on a collision. */
export function generateName(retry = 0): string {
  const name = `${pick(ADJECTIVES)}_${pick(SURNAMES)}`;
  return retry > 0 ? `${name}${randomInt(10)}` : name;
}
