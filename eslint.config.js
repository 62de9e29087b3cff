// Lint, and the layer rule from DESIGN.md: imports flow api → daemon → {images, runtime} → guest/protocol,
// with common/ (errors, atomic writes, logging, process supervision) available to every layer.
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');

/** Folders a layer must never import from, as relative-path patterns. */
function forbid(...layers) {
  return {
    'no-restricted-imports': [
      'error',
      {
        // Anchored to a relative path that climbs out of the folder and then names the layer, so
        // api/routes/images.ts may import './routes/images' but nothing may import '../../images/x'.
        patterns: layers.map((layer) =>
          typeof layer === 'string'
            ? {
                regex: `^(\\.\\./)+${layer.replace('/', '\\/')}(/|$)`,
                message: `layer rule (DESIGN.md): this folder must not import from ${layer}/`,
              }
            : layer,
        ),
      },
    ],
  };
}

module.exports = tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', '*.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['scripts/**/*.js'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {
        require: 'readonly',
        __dirname: 'readonly',
        console: 'readonly',
        process: 'readonly',
        module: 'writable',
      },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  { files: ['common/**/*.ts'], rules: forbid('api', 'daemon', 'images', 'runtime', 'guest', 'integration') },
  { files: ['daemon/**/*.ts'], rules: forbid('api', 'integration') },
  { files: ['images/**/*.ts'], rules: forbid('api', 'daemon', 'runtime', 'guest', 'integration') },
  { files: ['runtime/**/*.ts'], rules: forbid('api', 'daemon', 'images', 'guest/agent', 'integration') },
  // The agent is a separate program (bundled for the guest): of common/ it may use only the modules
  // written to be shared with it — plain node + tar-stream, no host-side imports.
  {
    files: ['guest/**/*.ts'],
    rules: forbid('api', 'daemon', 'images', 'runtime', 'integration', {
      regex: '^(\\.\\./)+common/(?!rootfs-archive$)',
      message: 'layer rule (DESIGN.md): the guest may import from common/ only rootfs-archive',
    }),
  },
  { files: ['api/**/*.ts'], rules: forbid('images', 'runtime', 'guest', 'integration') },
);
