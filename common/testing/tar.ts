/** Reading tar streams back in tests: every entry with its header fields and text body. */
import * as tar from 'tar-stream';

export interface TarEntryText {
  name: string;
  type: string;
  /** "" when the entry has none. */
  linkname: string;
  body: string;
}

/** The entries of a tar stream, in order, bodies as UTF-8 text. */
export async function readTarEntries(archive: NodeJS.ReadableStream): Promise<TarEntryText[]> {
  const extract = tar.extract();
  const out: TarEntryText[] = [];
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, body, next) => {
      const chunks: Buffer[] = [];
      body.on('data', (c: unknown) => chunks.push(c as Buffer));
      body.on('end', () => {
        out.push({
          name: header.name,
          type: header.type ?? 'file',
          linkname: header.linkname ?? '',
          body: Buffer.concat(chunks).toString(),
        });
        next();
      });
    });
    extract.on('finish', resolve);
    extract.on('error', reject);
  });
  archive.pipe(extract as unknown as NodeJS.WritableStream);
  await done;
  return out;
}
